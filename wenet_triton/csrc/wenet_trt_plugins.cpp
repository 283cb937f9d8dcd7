// TensorRT 10 plugins (IPluginV3 / IPluginCreatorV3One) around the CUDA kernels of
// wenet_kernels.cu, the same kernels the torch_cuda engine runs:
//   WenetAddLayerNorm    (x, delta, gamma, beta) -> (x + alpha*delta, LayerNorm(x + alpha*delta))
//   WenetGluDwConv       (h [B,T,2C], lens [B] i32, w [C,K], bias [C], pad [C], ln_gamma [C],
//                         ln_beta [C]) -> swish(LN(depthwise_conv(glu(h))))  [B,T,C]
//   WenetLogSoftmaxTopK  (logits [B,T,V]) -> (log_softmax fp32, top-k values fp32, indices i64)
//   WenetRelPosAttention (q+u [B,H,Tq,dk], k [1|B,H,Tk,dk], v [B,H,Tk,dk], bias [1|B,1|H,1|Tq,Tk],
//                         q+v [B,H,Tq,dk], p [1|B,H,Tk,dk])
//                         -> softmax(((q+u)k^T + (q+v)p^T) * scale + bias) v  [B,H,Tq,dk]
//   WenetAttention       (q, k, v, bias) -> softmax(q k^T * scale + bias) v (same layouts)
// Registered two ways: statically when the library is loaded (Triton: LD_PRELOAD or
// --backend-config=tensorrt,plugins=...), and through getCreators()/setLoggerFinder() for
// IPluginRegistry::loadLibrary (wenet_triton/trt/build.py) and trtexec --dynamicPlugins.
// Built in Dockerfile.triton against the TensorRT headers of NVIDIA's image. Not compiled or
// run in our test environment (no TensorRT there): see README "What was measured where".
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "wenet_kernels.h"

using namespace nvinfer1;

namespace wenet {
namespace {

char const* const kVERSION = "1";
char const* const kNAMESPACE = "";

// the kernels' dtype codes
int dtypeCode(DataType t) {
  switch (t) {
    case DataType::kFLOAT: return 0;
    case DataType::kHALF: return 1;
    case DataType::kBF16: return 2;
    default: return -1;
  }
}

bool isFloatType(DataType t) { return dtypeCode(t) >= 0; }

int64_t volume(Dims const& d, int32_t from, int32_t to) {
  int64_t v = 1;
  for (int32_t i = from; i < to; ++i) v *= d.d[i];
  return v;
}

// Reads a scalar attribute of the given type from a field collection (default when absent).
template <typename T>
T field(PluginFieldCollection const* fc, char const* name, PluginFieldType type, T dflt) {
  if (fc == nullptr) return dflt;
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    PluginField const& f = fc->fields[i];
    if (f.name != nullptr && std::strcmp(f.name, name) == 0 && f.type == type && f.length >= 1 &&
        f.data != nullptr)
      return *static_cast<T const*>(f.data);
  }
  return dflt;
}

// One object serves the core, build and runtime capabilities (as NVIDIA's V3 samples do).
class PluginBase : public IPluginV3,
                   public IPluginV3OneCore,
                   public IPluginV3OneBuild,
                   public IPluginV3OneRuntime {
 public:
  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }
  char const* getPluginVersion() const noexcept override { return kVERSION; }
  char const* getPluginNamespace() const noexcept override { return kNAMESPACE; }
  int32_t configurePlugin(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) noexcept override {
    return 0;
  }
  int32_t onShapeChange(PluginTensorDesc const*, int32_t, PluginTensorDesc const*,
                        int32_t) noexcept override {
    return 0;
  }
  IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }
  // default: linear layout, every tensor of the first one's float type (plugins with int or
  // fp32-only tensors override it)
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t,
                                 int32_t) noexcept override {
    PluginTensorDesc const& d = io[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    return pos == 0 ? isFloatType(d.type) : d.type == io[0].desc.type;
  }

 protected:
  // fields_ points into the derived object's members: rebuilt on each call
  PluginFieldCollection const* collection() noexcept {
    fc_.nbFields = static_cast<int32_t>(fields_.size());
    fc_.fields = fields_.data();
    return &fc_;
  }
  std::vector<PluginField> fields_;
  PluginFieldCollection fc_{};
};

// ------------------------------------------------------------------------ WenetAddLayerNorm
class AddLayerNorm final : public PluginBase {
 public:
  AddLayerNorm(float eps, float alpha) : eps_(eps), alpha_(alpha) {}
  char const* getPluginName() const noexcept override { return "WenetAddLayerNorm"; }
  IPluginV3* clone() noexcept override { return new AddLayerNorm(eps_, alpha_); }
  int32_t getNbOutputs() const noexcept override { return 2; }
  int32_t getOutputDataTypes(DataType* out, int32_t nbOutputs, DataType const* in,
                             int32_t nbInputs) const noexcept override {
    if (nbInputs != 4 || nbOutputs != 2) return -1;
    out[0] = out[1] = in[0];
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* in, int32_t nbInputs, DimsExprs const*, int32_t,
                          DimsExprs* out, int32_t nbOutputs, IExprBuilder&) noexcept override {
    if (nbInputs != 4 || nbOutputs != 2) return -1;
    out[0] = out[1] = in[0];
    return 0;
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    Dims const& d = in[0].dims;
    const int cols = static_cast<int>(d.d[d.nbDims - 1]);
    const int rows = static_cast<int>(volume(d, 0, d.nbDims - 1));
    return wk_add_layernorm(outputs[0], outputs[1], inputs[0], inputs[1], alpha_, inputs[2],
                            inputs[3], rows, cols, eps_, dtypeCode(in[0].type), stream);
  }
  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    fields_ = {PluginField("epsilon", &eps_, PluginFieldType::kFLOAT32, 1),
               PluginField("alpha", &alpha_, PluginFieldType::kFLOAT32, 1)};
    return collection();
  }

 private:
  float eps_, alpha_;
};

// --------------------------------------------------------------------------- WenetGluDwConv
class GluDwConv final : public PluginBase {
 public:
  GluDwConv(int32_t causal, int32_t hasLayerNorm, float eps)
      : causal_(causal), hasLn_(hasLayerNorm), eps_(eps) {}
  char const* getPluginName() const noexcept override { return "WenetGluDwConv"; }
  IPluginV3* clone() noexcept override { return new GluDwConv(causal_, hasLn_, eps_); }
  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t getOutputDataTypes(DataType* out, int32_t nbOutputs, DataType const* in,
                             int32_t nbInputs) const noexcept override {
    if (nbInputs != 7 || nbOutputs != 1) return -1;
    out[0] = in[0];
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* in, int32_t nbInputs, DimsExprs const*, int32_t,
                          DimsExprs* out, int32_t nbOutputs, IExprBuilder& eb) noexcept override {
    if (nbInputs != 7 || nbOutputs != 1 || in[0].nbDims != 3) return -1;
    out[0] = in[0];  // [B, T, 2C] -> [B, T, C]
    out[0].d[2] = eb.operation(DimensionOperation::kFLOOR_DIV, *in[0].d[2], *eb.constant(2));
    return 0;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbInputs,
                                 int32_t) noexcept override {
    PluginTensorDesc const& d = io[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return isFloatType(d.type);
    if (pos == 1) return d.type == DataType::kINT32;            // lens
    if (pos < nbInputs) return d.type == DataType::kFLOAT;      // conv / LN parameters stay fp32
    return d.type == io[0].desc.type;                           // output
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    Dims const& h = in[0].dims;
    const int B = static_cast<int>(h.d[0]), T = static_cast<int>(h.d[1]);
    const int C = static_cast<int>(h.d[2] / 2), K = static_cast<int>(in[2].dims.d[1]);
    auto f = [&](int i) { return static_cast<float const*>(inputs[i]); };
    return wk_glu_dwconv(outputs[0], inputs[0], static_cast<int32_t const*>(inputs[1]), f(2), f(3),
                         f(4), hasLn_ ? f(5) : nullptr, hasLn_ ? f(6) : nullptr, B, T, C, K,
                         causal_, eps_, dtypeCode(in[0].type), stream);
  }
  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    fields_ = {PluginField("causal", &causal_, PluginFieldType::kINT32, 1),
               PluginField("has_layer_norm", &hasLn_, PluginFieldType::kINT32, 1),
               PluginField("epsilon", &eps_, PluginFieldType::kFLOAT32, 1)};
    return collection();
  }

 private:
  int32_t causal_, hasLn_;
  float eps_;
};

// ----------------------------------------------------------------------- WenetLogSoftmaxTopK
class LogSoftmaxTopK final : public PluginBase {
 public:
  explicit LogSoftmaxTopK(int32_t k) : k_(k) {}
  char const* getPluginName() const noexcept override { return "WenetLogSoftmaxTopK"; }
  IPluginV3* clone() noexcept override { return new LogSoftmaxTopK(k_); }
  int32_t getNbOutputs() const noexcept override { return 3; }
  int32_t getOutputDataTypes(DataType* out, int32_t nbOutputs, DataType const*,
                             int32_t nbInputs) const noexcept override {
    if (nbInputs != 1 || nbOutputs != 3) return -1;
    out[0] = out[1] = DataType::kFLOAT;  // log-probs stay fp32 (the search adds them up)
    out[2] = DataType::kINT64;
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* in, int32_t nbInputs, DimsExprs const*, int32_t,
                          DimsExprs* out, int32_t nbOutputs, IExprBuilder& eb) noexcept override {
    if (nbInputs != 1 || nbOutputs != 3 || k_ < 1 || k_ > 32) return -1;
    out[0] = out[1] = out[2] = in[0];
    out[1].d[in[0].nbDims - 1] = out[2].d[in[0].nbDims - 1] = eb.constant(k_);
    return 0;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t,
                                 int32_t) noexcept override {
    PluginTensorDesc const& d = io[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return isFloatType(d.type);
    return d.type == (pos == 3 ? DataType::kINT64 : DataType::kFLOAT);
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    Dims const& d = in[0].dims;
    const int V = static_cast<int>(d.d[d.nbDims - 1]);
    const int rows = static_cast<int>(volume(d, 0, d.nbDims - 1));
    return wk_log_softmax_topk(static_cast<float*>(outputs[0]), static_cast<float*>(outputs[1]),
                               static_cast<int64_t*>(outputs[2]), inputs[0], rows, V, V, k_,
                               dtypeCode(in[0].type), stream);
  }
  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    fields_ = {PluginField("k", &k_, PluginFieldType::kINT32, 1)};
    return collection();
  }

 private:
  int32_t k_;
};

// ------------------------------------------------- WenetRelPosAttention / WenetAttention
class Attention final : public PluginBase {
 public:
  Attention(bool relPos, float scale) : relPos_(relPos), scale_(scale) {}
  char const* getPluginName() const noexcept override {
    return relPos_ ? "WenetRelPosAttention" : "WenetAttention";
  }
  IPluginV3* clone() noexcept override { return new Attention(relPos_, scale_); }
  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t nbIn() const { return relPos_ ? 6 : 4; }
  int32_t getOutputDataTypes(DataType* out, int32_t nbOutputs, DataType const* in,
                             int32_t nbInputs) const noexcept override {
    if (nbInputs != nbIn() || nbOutputs != 1) return -1;
    out[0] = in[0];
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* in, int32_t nbInputs, DimsExprs const*, int32_t,
                          DimsExprs* out, int32_t nbOutputs, IExprBuilder&) noexcept override {
    if (nbInputs != nbIn() || nbOutputs != 1 || in[0].nbDims != 4) return -1;
    out[0] = in[0];  // [B, H, Tq, dk]
    return 0;
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    Dims const& q = in[0].dims;
    Dims const& bias = in[3].dims;
    if (q.nbDims != 4 || in[1].dims.nbDims != 4 || bias.nbDims != 4) return -1;
    const int B = static_cast<int>(q.d[0]), H = static_cast<int>(q.d[1]);
    const int Tq = static_cast<int>(q.d[2]), dk = static_cast<int>(q.d[3]);
    const int Tk = static_cast<int>(in[1].dims.d[2]);
    return wk_attention(outputs[0], inputs[0], inputs[1], inputs[2], relPos_ ? inputs[4] : nullptr,
                        relPos_ ? inputs[5] : nullptr, inputs[3], B, H, Tq, Tk, dk,
                        static_cast<int>(in[1].dims.d[0]),
                        relPos_ ? static_cast<int>(in[5].dims.d[0]) : 1,
                        static_cast<int>(bias.d[0]), static_cast<int>(bias.d[1]),
                        static_cast<int>(bias.d[2]), scale_, dtypeCode(in[0].type), stream);
  }
  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    fields_ = {PluginField("scale", &scale_, PluginFieldType::kFLOAT32, 1)};
    return collection();
  }

 private:
  bool relPos_;
  float scale_;
};

// ------------------------------------------------------------------------------- creators
template <typename Make>
class Creator final : public IPluginCreatorV3One {
 public:
  Creator(char const* name, std::vector<PluginField> attrs, Make make)
      : name_(name), attrs_(std::move(attrs)), make_(make) {
    fc_.nbFields = static_cast<int32_t>(attrs_.size());
    fc_.fields = attrs_.data();
  }
  IPluginV3* createPlugin(char const*, PluginFieldCollection const* fc,
                          TensorRTPhase) noexcept override {
    try {
      return make_(fc);
    } catch (...) {
      return nullptr;
    }
  }
  PluginFieldCollection const* getFieldNames() noexcept override { return &fc_; }
  char const* getPluginName() const noexcept override { return name_; }
  char const* getPluginVersion() const noexcept override { return kVERSION; }
  char const* getPluginNamespace() const noexcept override { return kNAMESPACE; }

 private:
  char const* name_;
  std::vector<PluginField> attrs_;
  PluginFieldCollection fc_{};
  Make make_;
};

template <typename Make>
Creator<Make>* makeCreator(char const* name, std::vector<PluginField> attrs, Make make) {
  return new Creator<Make>(name, std::move(attrs), make);
}

IPluginCreatorInterface* const* creatorList(int32_t& n) {
  static IPluginCreatorInterface* const list[] = {
      makeCreator("WenetAddLayerNorm",
                  {PluginField("epsilon", nullptr, PluginFieldType::kFLOAT32, 1),
                   PluginField("alpha", nullptr, PluginFieldType::kFLOAT32, 1)},
                  [](PluginFieldCollection const* fc) -> IPluginV3* {
                    return new AddLayerNorm(
                        field<float>(fc, "epsilon", PluginFieldType::kFLOAT32, 1e-5f),
                        field<float>(fc, "alpha", PluginFieldType::kFLOAT32, 1.f));
                  }),
      makeCreator("WenetGluDwConv",
                  {PluginField("causal", nullptr, PluginFieldType::kINT32, 1),
                   PluginField("has_layer_norm", nullptr, PluginFieldType::kINT32, 1),
                   PluginField("epsilon", nullptr, PluginFieldType::kFLOAT32, 1)},
                  [](PluginFieldCollection const* fc) -> IPluginV3* {
                    return new GluDwConv(
                        field<int32_t>(fc, "causal", PluginFieldType::kINT32, 0),
                        field<int32_t>(fc, "has_layer_norm", PluginFieldType::kINT32, 1),
                        field<float>(fc, "epsilon", PluginFieldType::kFLOAT32, 1e-5f));
                  }),
      makeCreator("WenetLogSoftmaxTopK",
                  {PluginField("k", nullptr, PluginFieldType::kINT32, 1)},
                  [](PluginFieldCollection const* fc) -> IPluginV3* {
                    return new LogSoftmaxTopK(field<int32_t>(fc, "k", PluginFieldType::kINT32, 10));
                  }),
      makeCreator("WenetRelPosAttention",
                  {PluginField("scale", nullptr, PluginFieldType::kFLOAT32, 1)},
                  [](PluginFieldCollection const* fc) -> IPluginV3* {
                    return new Attention(true, field<float>(fc, "scale", PluginFieldType::kFLOAT32, 1.f));
                  }),
      makeCreator("WenetAttention",
                  {PluginField("scale", nullptr, PluginFieldType::kFLOAT32, 1)},
                  [](PluginFieldCollection const* fc) -> IPluginV3* {
                    return new Attention(false, field<float>(fc, "scale", PluginFieldType::kFLOAT32, 1.f));
                  }),
  };
  n = static_cast<int32_t>(sizeof(list) / sizeof(list[0]));
  return list;
}

// Static registration when the library is loaded (LD_PRELOAD into tritonserver).
struct Registrar {
  Registrar() {
    int32_t n = 0;
    IPluginCreatorInterface* const* list = creatorList(n);
    for (int32_t i = 0; i < n; ++i) getPluginRegistry()->registerCreator(*list[i], kNAMESPACE);
  }
};
Registrar const gRegistrar;

}  // namespace
}  // namespace wenet

extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder*) {}

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  return wenet::creatorList(nbCreators);
}
