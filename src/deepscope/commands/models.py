"""``deepscope models``: the model specs deepscope understands."""

from deepscope.models.zoo import available_models


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the models deepscope can load",
                                   description="List model specs that `deepscope ... MODEL` accepts.")
    parser.set_defaults(run=run)


def run(args) -> int:
    rows = available_models()
    width = max(len(spec) for spec, _ in rows)
    for spec, description in rows:
        print(f"{spec:<{width}}  {description}")
    return 0
