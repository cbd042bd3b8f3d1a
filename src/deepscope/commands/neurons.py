"""``deepscope neurons MODEL IMAGES --layer NAME --channels 0,5,17 --top 9``: top-activating crops and guided backprop."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deepscope.commands.common import (add_images_argument, add_job_options, add_model_argument, add_run_options,
                                       check_job_options, check_out_folder, images_from_args, int_list,
                                       model_from_args, positive_int, report_skipped, run_store_job, safe_name,
                                       wrote)
from deepscope.errors import DeepscopeError
from deepscope.fileio import Outputs, display_path, write_text


def position(text: str) -> tuple[int, int]:
    """``--neuron Y,X``: two integers from 0."""
    values = int_list(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two integers Y,X (a position in the layer's map), got {text!r}")
    return values[0], values[1]


def channel_list(text: str) -> list[int] | str:
    """``--channels``: comma-separated channels, or all."""
    return "all" if text.strip().lower() == "all" else int_list(text)


def register(subparsers) -> None:
    parser = subparsers.add_parser("neurons", help="top-activating image crops of a layer's channels, with guided backprop",
                                   description="Scan IMAGES for the regions where each channel of a layer fires most; "
                                   "crop them at the neuron's receptive field and show the neuron's guided backprop.")
    add_model_argument(parser)
    add_images_argument(parser)
    parser.add_argument("--layer", required=True, help="layer name (see `deepscope layers MODEL`)")
    parser.add_argument("--channels", type=channel_list, default=None,
                        help="comma-separated channels, or all (default 0,1,2; with --store: all)")
    parser.add_argument("--top", type=positive_int, default=9, help="crops per channel (default 9)")
    parser.add_argument("--neuron", type=position, default=None, metavar="Y,X",
                        help="rank images by this one spatial neuron of each channel (default: the channel's maximum)")
    add_run_options(parser, out="out/neurons")
    add_job_options(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from deepscope.neurons import neuron_view
    from deepscope.probe import get_layer
    from deepscope.render.common import save_figure
    from deepscope.render.neurons import neuron_figure

    check_job_options(args)
    if args.store:
        return run_job(args)
    if args.channels == "all":
        raise DeepscopeError("--channels all needs --store (a figure shows a few channels); name the channels.")
    channels = list(dict.fromkeys(args.channels or [0, 1, 2]))
    out = check_out_folder(args)
    stem = f"neurons_{safe_name(args.layer)}"
    figure_path, json_path = out / f"{stem}.png", out / f"{stem}.json"
    with Outputs([figure_path, json_path], overwrite=args.force) as outputs:
        loaded = model_from_args(args)
        get_layer(loaded.model, args.layer)
        images = images_from_args(args, loaded)
        view = neuron_view(loaded.model, loaded.preprocess, images, args.layer, channels,
                           args.top, neuron=args.neuron, batch_size=args.batch_size, progress=not args.quiet)
        save_figure(neuron_figure(view), figure_path)
        rows = [{"channel": c, "top": [{"path": path, "activation": round(float(value), 5), "position": where,
                                         "box": list(box)}
                                        for path, value, where, box in zip(view.paths[i], view.top.values[i].tolist(),
                                                                              view.top.positions[i].tolist(),
                                                                              view.boxes[i])]}
                for i, c in enumerate(view.channels)]
        write_text(json_path, json.dumps({"model": loaded.name, "layer": args.layer,
                                          "receptive_field": view.field._asdict(), "channels": rows}, indent=2))
    print(f"{args.layer}: receptive field {view.field.size} px, stride {view.field.stride} ({view.field.method})")
    for i, c in enumerate(view.channels):
        print(f"  channel {c}: top activation {float(view.top.values[i, 0]):.3f} in "
              f"{display_path(Path(view.paths[i][0]).name)}")
    wrote(outputs.written)
    report_skipped(view.top.skipped)
    return 0


def run_job(args) -> int:
    """``--store``: the top-k images of every channel (or the chosen ones) over every photo, kept in the store."""
    from deepscope.jobs import NeuronsJob, stored_top_activations

    loaded = model_from_args(args)
    images = images_from_args(args, loaded)
    channels = None if args.channels in (None, "all") else tuple(args.channels)
    job = NeuronsJob(args.layer, channels, args.top, tuple(args.neuron) if args.neuron else None)
    top = stored_top_activations(run_store_job(args, job, loaded, images).open())
    report_skipped(top.skipped)
    shown = min(len(top.channels), 5)
    for row in range(shown):
        index = int(top.image_indices[row, 0])
        print(f"  channel {top.channels[row]}: top activation {float(top.values[row, 0]):.3f} in "
              f"{display_path(images.paths[index].name)}")
    if len(top.channels) > shown:
        print(f"  ... {len(top.channels) - shown} more channel(s) in the store's topk.parquet")
    return 0
