"""``deepscope methods``: the attribution methods of the catalogue, their options, display and cost."""

from deepscope.catalogue import METHODS, get_method


def register(subparsers) -> None:
    parser = subparsers.add_parser("methods", help="list the attribution methods and their options",
                                   description="List every method `explain`, `evaluate` and `report` can use, with "
                                   "its paper, cost, how its maps are shown, and its options (set one with "
                                   "--option METHOD.OPTION=VALUE).")
    parser.add_argument("names", nargs="*", metavar="METHOD", help="only these methods (default: all)")
    parser.set_defaults(run=run)


def run(args) -> int:
    entries = [get_method(name) for name in args.names] if args.names else list(METHODS.values())
    print("\n\n".join(entry.describe() for entry in entries))
    return 0
