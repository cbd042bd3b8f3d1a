"""``deepscope layers MODEL``: every layer's dotted name, type and output shape."""

from deepscope.commands.common import add_model_argument, model_from_args, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser("layers", help="list a model's layers with their output shapes",
                                   description="List the dotted layer names to pass to --layer.")
    add_model_argument(parser)
    parser.add_argument("--depth", type=positive_int, default=None,
                        help="only names with at most this many dotted parts")
    parser.set_defaults(run=run)


def run(args) -> int:
    import torch

    from deepscope.probe import Probe, layer_names, model_device

    loaded = model_from_args(args)
    names = [n for n in layer_names(loaded.model) if args.depth is None or n.count(".") < args.depth]
    size = loaded.preprocess.input_size
    with Probe(loaded.model, names, detach=True) as probe, torch.inference_mode():
        probe(torch.zeros(1, 3, size, size, device=model_device(loaded.model)))
        shapes = {name: tuple(probe.activations[name].shape[1:]) for name in names if name in probe.activations}
    modules = dict(loaded.model.named_modules())
    width = max((len(n) for n in names), default=4)
    print(f"{loaded.name}: {loaded.parameter_count:,} parameters, input {size}x{size}")
    for name in names:
        shape = "x".join(map(str, shapes[name])) if name in shapes else "-"
        print(f"{name:<{width}}  {type(modules[name]).__name__:<24} {shape}")
    return 0
