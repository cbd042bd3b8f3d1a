"""``deepscope classify MODEL IMAGES``: top-k predictions, and accuracy when labels are known."""

from __future__ import annotations

import csv
import io
import json

from deepscope.classify import Classification, classify
from deepscope.commands.common import (add_images_argument, add_job_options, add_model_argument, add_run_options,
                                       check_job_options, file_name, images_from_args, model_from_args,
                                       nonnegative_int, positive_int, report_skipped, run_store_job, wrote)
from deepscope.fileio import Outputs, display_path, write_text


def register(subparsers) -> None:
    parser = subparsers.add_parser("classify", help="top-k predictions per image and accuracy",
                                   description="Classify images; with class folders, report top-1 and top-5 "
                                   "accuracy per class and overall (from the full output, whatever --top is).")
    add_model_argument(parser)
    add_images_argument(parser)
    parser.add_argument("--top", type=positive_int, default=5, help="classes kept per image (default 5)")
    parser.add_argument("--output", "-o", type=file_name(".csv", ".json"), default=None,
                        help="write predictions to a .csv or .json file")
    parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    parser.add_argument("--show", type=nonnegative_int, default=20,
                        help="print at most this many per-image rows (default 20)")
    add_run_options(parser)
    add_job_options(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    check_job_options(args)
    with Outputs([args.output] if args.output else [], overwrite=args.force, option="--output") as outputs:
        loaded = model_from_args(args)
        images = images_from_args(args, loaded)
        if args.store:
            from deepscope.jobs import ClassifyJob, stored_classification

            result = stored_classification(run_store_job(args, ClassifyJob(args.top), loaded, images).open())
        else:
            result = classify(loaded, images, topk=args.top, batch_size=args.batch_size, progress=not args.quiet)
        names = loaded.classes.names
        print(f"{loaded.name} on {len(result.paths)} image(s) from {display_path(images.root)}")
        for path, idx, prob in list(zip(result.paths, result.topk_indices.tolist(), result.topk_probs.tolist()))[: args.show]:
            best = ", ".join(f"{names[i]} {p:.2f}" for i, p in list(zip(idx, prob))[:3])
            print(f"  {display_path(path.name)}: {best}")
        if len(result.paths) > args.show:
            print(f"  ... {len(result.paths) - args.show} more (use --output to save all)")
        if result.accuracy() is not None:
            print("accuracy per class (top-1, top-5, images):")
            top5 = result.per_class_accuracy(5)
            for c, (acc, n) in result.per_class_accuracy(1).items():
                print(f"  {c:>4} {names[c]:<28} {acc:6.1%} {top5[c][0]:6.1%} {n:>5}")
            labelled = sum(rank is not None for rank in result.label_ranks)
            print(f"overall on {labelled} labelled image(s): top-1 {result.accuracy(1):.1%}, "
                  f"top-5 {result.accuracy(5):.1%}")
        if args.output:
            text = _to_json(result, names) if args.output.lower().endswith(".json") else _to_csv(result, names)
            write_text(args.output, text)
    wrote(outputs.written)
    report_skipped(result.skipped)
    return 0


def _rows(result: Classification, names) -> list[dict]:
    rows = []
    for path, label, idx, prob in zip(result.paths, result.labels, result.topk_indices.tolist(), result.topk_probs.tolist()):
        rows.append({"path": str(path), "label": label, "label_name": names[label] if label is not None else None,
                     "predictions": [{"class": i, "name": names[i], "probability": round(p, 6)} for i, p in zip(idx, prob)]})
    return rows


def _to_json(result: Classification, names) -> str:
    summary = {"top1": result.accuracy(1), "top5": result.accuracy(5),
               "skipped": [{"path": str(p), "reason": r} for p, r in result.skipped]}
    return json.dumps({"summary": summary, "images": _rows(result, names)}, indent=2)


def _to_csv(result: Classification, names) -> str:
    buffer = io.StringIO()
    k = result.topk_indices.shape[1]
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "label_name"] + [f"{c}{i + 1}" for i in range(k) for c in ("class", "name", "prob")])
    for row in _rows(result, names):
        cells = [row["path"], row["label"], row["label_name"]]
        for p in row["predictions"]:
            cells += [p["class"], p["name"], f"{p['probability']:.6f}"]
        writer.writerow(cells)
    return buffer.getvalue()
