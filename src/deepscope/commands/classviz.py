"""``deepscope classviz MODEL --classes flamingo,pelican --preset lucid``: images that maximise class logits."""

from __future__ import annotations

import json

from deepscope.commands.common import (add_model_argument, add_run_options, check_out_folder, model_from_args,
                                       name_list, positive_float, positive_int, seed, wrote)
from deepscope.fileio import Outputs, write_text


def register(subparsers) -> None:
    from deepscope.optimize import PRESETS

    parser = subparsers.add_parser("classviz", help="class model visualisation: images that maximise a class score",
                                   description="Optimise one image per class to maximise its logit "
                                   "(Simonyan et al. 2014; Yosinski et al. 2015; Lucid).")
    add_model_argument(parser)
    parser.add_argument("--classes", required=True, type=name_list,
                        help='comma-separated class names, indices or WordNet ids, e.g. flamingo,pelican,'
                        '"Indian cobra",130 (a name two classes share, like crane, needs the index or WordNet id)')
    parser.add_argument("--preset", choices=list(PRESETS), default="lucid", help="recipe (default lucid)")
    parser.add_argument("--steps", type=positive_int, default=256, help="optimisation steps (default 256)")
    parser.add_argument("--lr", type=positive_float, default=None, help="step size (default: the preset's)")
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    add_run_options(parser, out="out/classviz")
    parser.set_defaults(run=run)


def run(args) -> int:
    from deepscope.optimize import class_model, class_probabilities
    from deepscope.render.common import save_figure
    from deepscope.render.neurons import image_grid_figure

    out = check_out_folder(args)
    figure_path, json_path = out / f"classviz_{args.preset}.png", out / f"classviz_{args.preset}.json"
    with Outputs([figure_path, json_path], overwrite=args.force) as outputs:
        loaded = model_from_args(args)
        classes = [loaded.classes.index(name) for name in args.classes]
        images = class_model(loaded.model, classes, loaded.preprocess, preset=args.preset, steps=args.steps,
                             seed=args.seed, lr=args.lr, progress=not args.quiet)
        probs = class_probabilities(loaded.model, loaded.preprocess, images).cpu()
        scores = [float(probs[i, c]) for i, c in enumerate(classes)]
        titles = [f"{loaded.classes.names[c]}\np={p:.2f}" for c, p in zip(classes, scores)]
        save_figure(image_grid_figure(images, titles, f"{loaded.name}: class models ({args.preset}, {args.steps} steps)"),
                    figure_path)
        write_text(json_path, json.dumps({"model": loaded.name, "preset": args.preset, "steps": args.steps,
                                          "seed": args.seed,
                                          "classes": [{"class": c, "name": loaded.classes.names[c],
                                                       "probability": round(p, 5)} for c, p in zip(classes, scores)]},
                                         indent=2))
    for c, p in zip(classes, scores):
        print(f"  {loaded.classes.describe(c)}: probability {p:.3f}")
    wrote(outputs.written)
    return 0
