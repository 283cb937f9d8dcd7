"""Serving subcommands (build-repo, serve, bench) for `wenet-triton`."""


def add_commands(sub, model_arg, weights_args):
    return sub
