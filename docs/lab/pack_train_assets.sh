#!/usr/bin/env bash
# Pack what training the demo model needs on the GPU machine into .device_train/ (git-ignored,
# carried with the device tool): espeak-ng from this machine's Debian packages (the binary,
# the shared libraries it loads, espeak-ng-data with the Mandarin and English dictionaries only), the
# shared generator and text lists, and a kaldi-native-fbank wheel for Python 3.12.
# Debian bookworm's espeak-ng reproduces ../shared/data/synth_test bit for bit; this checks it.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=.device_train
command -v espeak-ng >/dev/null || { apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null; }
rm -rf $D && mkdir -p $D/espeak/lib $D/espeak/espeak-ng-data $D/synth $D/whl
cp "$(command -v espeak-ng)" $D/espeak/
# every library espeak-ng loads except the C library itself (the GPU machine's glibc is newer)
ldd "$(command -v espeak-ng)" | awk '/=>/ {print $3}' \
  | grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' \
  | xargs -I{} cp -L {} $D/espeak/lib/
data=$(espeak-ng --version | sed -n 's/.*Data at: //p')
for f in "$data"/*; do
  case "$(basename "$f")" in
    *_dict) case "$(basename "$f")" in cmn_dict|en_dict) cp -r "$f" $D/espeak/espeak-ng-data/ ;; esac ;;
    *) cp -r "$f" $D/espeak/espeak-ng-data/ ;;
  esac
done
cp ../shared/synth/{gen.py,units.txt,train.txt,dev.txt,test.txt} $D/synth/
# more sentences of the same distribution, and its word list for composed sentences
# (jieba's dict.txt from its PyPI sdist)
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps --no-binary=:all: -d "$tmp" jieba==0.42.1
tar xzf "$tmp"/jieba-0.42.1.tar.gz -C "$tmp" jieba-0.42.1/jieba/dict.txt
python3 recipes/demo_zh_synth/make_more_text.py --dict "$tmp"/jieba-0.42.1/jieba/dict.txt \
  --units ../shared/synth/units.txt --exclude ../shared/synth/dev.txt ../shared/synth/test.txt \
  --num "${MORE_SENTENCES:-150000}" --out $D/synth/more.txt --words-out $D/synth/words.txt
rm -rf "$tmp"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d $D/whl kaldi-native-fbank==1.23.0
# the packed espeak-ng must give the shared test set's audio exactly
tmp=$(mktemp -d)
head -3 ../shared/data/synth_test/text > "$tmp/t.txt"
python3 $D/synth/gen.py "$PWD/$D/espeak" "$tmp/t.txt" "$tmp/out" --wav --jobs 1 >/dev/null
for u in $(cut -d' ' -f1 "$tmp/t.txt"); do
  cmp -s "$tmp/out/$u.wav" ../shared/data/synth_test/$u.wav || { echo "packed espeak-ng: $u differs from synth_test" >&2; exit 1; }
done
rm -rf "$tmp"
echo "packed espeak-ng reproduces synth_test; $(du -sh $D | cut -f1) in $D"
