"""``deepscope filters MODEL``: a convolution's filters as a grid of tiles (default: the first convolution)."""

from __future__ import annotations

from deepscope.commands.common import (add_model_argument, add_out_option, check_out_folder, model_from_args,
                                       positive_int, safe_name, wrote)
from deepscope.fileio import Outputs
from deepscope.filters import NORMALIZATIONS, filter_view


def register(subparsers) -> None:
    parser = subparsers.add_parser("filters", help="a convolution's filters as image tiles",
                                   description="Draw a convolution's filters: colour tiles for the first layer, "
                                   "one row per output channel deeper in, one tile per channel for a depthwise "
                                   "convolution, and the weight matrix for a 1x1 convolution.")
    add_model_argument(parser)
    parser.add_argument("--layer", default=None, help="a convolution or a block (default: the first convolution); "
                        "see `deepscope layers MODEL`")
    parser.add_argument("--normalize", choices=NORMALIZATIONS, default="per-filter",
                        help="scale each filter to [0,1] on its own, or all filters together (default per-filter)")
    parser.add_argument("--max-filters", type=positive_int, default=None, help="output channels shown at most")
    parser.add_argument("--max-inputs", type=positive_int, default=None, help="input channels shown at most")
    add_out_option(parser, "out/filters")
    parser.set_defaults(run=run)


def run(args) -> int:
    from deepscope.render.common import save_figure
    from deepscope.render.filters import filter_grid_figure

    out = check_out_folder(args)
    loaded = model_from_args(args)
    view = filter_view(loaded.model, args.layer, normalize=args.normalize, max_outputs=args.max_filters,
                       max_inputs=args.max_inputs)
    path = out / f"filters-{safe_name(loaded.name, keep='-_.')}-{safe_name(view.layer, 80, keep='-_.')}.png"
    with Outputs([path], overwrite=args.force) as outputs:
        save_figure(filter_grid_figure(view, title=f"{loaded.name}: {view.description}"), path)
    print(view.description)
    wrote(outputs.written)
    return 0
