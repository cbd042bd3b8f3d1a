"""Section "model": what the model is, how it reads an image, and how well it does on these images."""

from __future__ import annotations

from deepscope.report.base import Facts, Note, ReportContext, Section, Table

#: unlabelled image sets list at most this many predictions
MAX_PREDICTION_ROWS = 30


def model_section(ctx: ReportContext) -> Section:
    loaded, images = ctx.loaded, ctx.images
    result = ctx.classification()
    facts = [
        ("model", loaded.name),
        ("source", loaded.source),
        ("parameters", f"{loaded.parameter_count:,} ({loaded.parameter_count / 1e6:.2f} M)"),
        ("input", f"{loaded.preprocess.input_size} x {loaded.preprocess.input_size} RGB"),
        ("preprocessing", loaded.preprocess.describe()),
        ("classes", f"{len(loaded.classes)}"),
        ("device", str(ctx.device)),
        ("images", f"{len(result.paths)} read from {images.root}"
                   + (f" ({len(result.skipped)} skipped)" if result.skipped else "")),
    ]
    items = []
    names = loaded.classes.names
    top1, top5 = result.accuracy(1), result.accuracy(5)
    if top1 is not None:
        labelled = sum(label is not None for label in result.labels)
        facts.append(("accuracy", f"top-1 {top1:.1%}, top-5 {top5:.1%} on {labelled} labelled image(s)"))
        items.append(Facts(facts))
        per5 = result.per_class_accuracy(5)
        rows = [[names[c], str(n), f"{acc:.0%}", f"{per5[c][0]:.0%}"] for c, (acc, n) in result.per_class_accuracy(1).items()]
        items.append(Table(["class", "images", "top-1", "top-5"], rows, "Accuracy per class (labels from the folder names)."))
    else:
        facts.append(("accuracy", "not measured: the images have no labels (use one folder per class, "
                                  "named by WordNet id or class name)"))
        items.append(Facts(facts))
        rows = []
        for path, idx, prob in list(zip(result.paths, result.topk_indices.tolist(), result.topk_probs.tolist()))[:MAX_PREDICTION_ROWS]:
            rows.append([path.name] + [f"{names[i]} ({p:.0%})" for i, p in list(zip(idx, prob))[:3]])
        items.append(Table(["image", "1st", "2nd", "3rd"], rows, "Top-3 predictions (softmax probability)."))
        if len(result.paths) > MAX_PREDICTION_ROWS:
            items.append(Note(f"{len(result.paths) - MAX_PREDICTION_ROWS} more image(s) not listed."))
    if result.skipped:
        items.append(Table(["skipped file", "reason"], [[str(p), r] for p, r in result.skipped],
                           "Files that could not be read."))
    return Section("model", "The model",
                   "The classifier under study, the preprocessing it expects, and how well it classifies "
                   "these images; every later section explains this model's predictions.", items)
