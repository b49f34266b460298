"""``sslkd eval PROTOCOL``: every protocol's options, and the commands that run it, print one line per member (or
JSON) and store the results where ``--output`` and ``--record`` say. The protocols themselves are functions of
``sslkd.eval`` with typed arguments."""

from __future__ import annotations

import argparse
import json
import time


def add_eval_commands(commands: argparse._SubParsersAction) -> None:
    """``sslkd eval`` and its protocols; each protocol's parser sets ``args.run``, its command."""
    from sslkd.eval.linear import PROTOCOLS
    from sslkd.eval.semisup import FINETUNE_PROTOCOLS
    from sslkd.eval.transfer import MODES

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint")
    protocols = evaluate.add_subparsers(dest="protocol", required=True)

    knn = protocols.add_parser("knn", help="weighted k-NN (DINO protocol) of a checkpoint's members")
    knn.add_argument("--checkpoint", required=True,
                     help="a run directory, or its checkpoints/last.pt, written by sslkd train")
    knn.add_argument("--member", help="evaluate only this member (default: every member)")
    knn.add_argument("--data", dest="data_name", help="data set to evaluate on (default: the training data set)")
    knn.add_argument("--data-root", help="root of that data set")
    knn.add_argument("--encoder", choices=("auto", "teacher", "student"),
                     help="which encoder of a member with an EMA teacher to evaluate (default: the run's "
                          "eval.encoder; auto: the method's authors' choice)")
    knn.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_layer_args(knn)
    knn.set_defaults(run=cmd_knn)

    # the probe's protocol lands in args.probe because ``eval`` keeps its sub-command in args.protocol
    linear = protocols.add_parser("linear", help="linear probe (DINO or DoGo protocol) of a checkpoint's members")
    linear.add_argument("--checkpoint", required=True,
                        help="a checkpoints/last.pt written by sslkd train, or a run directory")
    linear.add_argument("--member", help="evaluate only this member (default: every member)")
    linear.add_argument("--protocol", dest="probe", default="dino", choices=sorted(PROTOCOLS),
                        help="dino: SGD + cosine, augmented, last-4-block CLS for ViTs; dogo: Adam 3e-4, cached "
                             "features, best epoch on a 10%% validation split (default: dino)")
    linear.add_argument("--epochs", type=int, help="probe epochs (default: 100)")
    linear.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="augment the train images (default: on for dino, off for dogo; off caches features)")
    linear.add_argument("--n-last-blocks", type=int, default=4, help="ViT blocks whose CLS tokens are concatenated")
    linear.add_argument("--seed", type=int, default=0, help="seed of the probe (init, shuffling, crops, split)")
    linear.add_argument("--data", dest="data_name", help="data set to probe on (default: the training data set)")
    linear.add_argument("--data-root", help="root of that data set")
    _add_layer_args(linear)
    _add_output_args(linear)
    linear.set_defaults(run=cmd_linear)

    classify = protocols.add_parser("classify", help="test top-1 of a supervised run's classifiers and their "
                                                     "ensemble")
    classify.add_argument("--checkpoint", required=True, help="a checkpoints/last.pt written by sslkd train")
    classify.add_argument("--data", dest="data_name", help="data set to test on (default: the training data set)")
    classify.add_argument("--data-root", help="root of that data set")
    classify.add_argument("--json", action="store_true", help="print the results as JSON")
    classify.set_defaults(run=cmd_classify)

    semisup = protocols.add_parser("semisup", help="fine-tune on a class-balanced label fraction (MOKD Tab. 4, "
                                                   "DoGo Tab. 2)")
    _add_common_args(semisup)
    semisup.add_argument("--fraction", type=float, required=True, help="label fraction, e.g. 0.01 or 0.1")
    semisup.add_argument("--protocol", dest="recipe", default="mokd", choices=sorted(FINETUNE_PROTOCOLS),
                         help="mokd: SimCLR recipe, batch 1024, 60/30 epochs; dogo: batch 64, 100 epochs, 15%% "
                              "validation split (default: mokd)")
    semisup.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the protocol's)")
    semisup.add_argument("--batch-size", type=int, help="batch size (default: the protocol's)")
    semisup.set_defaults(run=cmd_semisup)

    transfer = protocols.add_parser("transfer", help="linear probe or fine-tuning on another data set (MOKD Tab. 5, "
                                                     "DoGo Tab. 3, MCL Tab. 4)")
    _add_common_args(transfer, data_help="the target data set (required), e.g. cifar100")
    transfer.add_argument("--mode", default="linear", choices=MODES, help="linear probe or fine-tuning")
    transfer.add_argument("--protocol", dest="recipe", default="dogo",
                          help=f"linear: {', '.join(sorted(PROTOCOLS))}; finetune: "
                               f"{', '.join(sorted(FINETUNE_PROTOCOLS))} (default: dogo)")
    transfer.add_argument("--epochs", type=int, help="epochs (default: the protocol's; fine-tuning 100 as MOKD)")
    transfer.add_argument("--image-size", type=int, help="resize target images to this (default: pre-training size)")
    transfer.set_defaults(run=cmd_transfer)

    noisy = protocols.add_parser("noisy", help="linear probe with a given label-noise rate (DoGo Fig. 3)")
    _add_common_args(noisy)
    noisy.add_argument("--rate", type=float, required=True, help="fraction of train labels redrawn, e.g. 0.2")
    noisy.add_argument("--protocol", dest="probe", default="dogo", choices=sorted(PROTOCOLS),
                       help="linear-probe protocol (default: dogo)")
    noisy.add_argument("--epochs", type=int, help="probe epochs (default: the protocol's)")
    noisy.add_argument("--exclude-true", action="store_true", help="redraw only among the other classes")
    noisy.set_defaults(run=cmd_noisy)

    consistency = protocols.add_parser("consistency", help="fraction of test images two members classify alike "
                                                           "(MOKD Tab. 9)")
    consistency.add_argument("--checkpoint", required=True, help="a checkpoints/last.pt or a run directory")
    consistency.add_argument("--member", help="the first model (default: the first of a two-member run)")
    consistency.add_argument("--other-checkpoint", help="the second model's checkpoint (default: the same run)")
    consistency.add_argument("--other-member", help="the second model (default: the second of a two-member run)")
    consistency.add_argument("--data", dest="data_name", help="data set both are evaluated on (default: training's)")
    consistency.add_argument("--data-root", help="root of that data set")
    consistency.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    _add_output_args(consistency)
    consistency.set_defaults(run=cmd_consistency)

    attention = protocols.add_parser("attention", help="mean attention distance per layer (MOKD Fig. 5)")
    _add_common_args(attention)
    attention.add_argument("--num-images", type=int, default=256, help="test images averaged over (default 256)")
    attention.add_argument("--plot", help="also draw the distances per layer to this PNG")
    attention.set_defaults(run=cmd_attention)

    tsne = protocols.add_parser("tsne", help="t-SNE of a member's test features, as a PNG")
    _add_common_args(tsne)
    tsne.add_argument("--out", required=True, help="PNG path prefix: writes <out>_<member>.png")
    tsne.add_argument("--num-images", type=int, default=2000, help="test images embedded (default 2000)")
    tsne.set_defaults(run=cmd_tsne)

    multiexit = protocols.add_parser("multiexit", help="k-NN or linear probe of every layer of several runs: table "
                                                       "+ PNG of accuracy against layer per framework (SDSSL Fig. 3)")
    multiexit.add_argument("--checkpoints", nargs="+", required=True, metavar="RUN",
                           help="checkpoints or run directories (e.g. MoCo v3 and SD-MoCo v3 runs, several seeds)")
    multiexit.add_argument("--protocol", dest="multiexit_protocol", default="knn", choices=["knn", "linear"])
    multiexit.add_argument("--layers", default="all",
                           help="all, or comma-separated 1-based numbers, block names, final")
    multiexit.add_argument("--member", help="evaluate only this member")
    multiexit.add_argument("--probe", default="dino", choices=sorted(PROTOCOLS), help="linear-probe recipe")
    multiexit.add_argument("--epochs", type=int, help="linear-probe epochs (default: the recipe's)")
    multiexit.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                           help="augment the probe's train images (off caches features)")
    multiexit.add_argument("--out", required=True, help="directory for the table (md, csv) and the PNG")
    multiexit.set_defaults(run=cmd_multiexit)

    analyze = protocols.add_parser("analyze", help="per-layer alignment, uniformity, negative alignment and their "
                                                   "ratios, and layer-by-layer CKA (SDSSL Sec. 4.4): CSV, JSON, PNGs")
    analyze.add_argument("--checkpoints", "--checkpoint", dest="checkpoints", nargs="+", required=True, metavar="RUN",
                         help="one or more checkpoints or run directories (e.g. MoCo v3 and SD-MoCo v3)")
    analyze.add_argument("--member", help="analyse only this member")
    analyze.add_argument("--max-images", type=int, default=2000,
                         help="test images used (pairwise metrics are O(n^2))")
    analyze.add_argument("--seed", type=int, default=0, help="seed of the image subset and of the two views")
    analyze.add_argument("--out", required=True, help="output directory")
    analyze.set_defaults(run=cmd_analyze)


def _add_common_args(parser: argparse.ArgumentParser, data_help: str = "data set to evaluate on "
                     "(default: the training data set)") -> None:
    """--checkpoint, --member, --data, --data-root, --seed, --device, --json, --output, --record, --key."""
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoints/last.pt written by sslkd train, or a run directory")
    parser.add_argument("--member", help="evaluate only this member (default: every member)")
    parser.add_argument("--data", dest="data_name", help=data_help)
    parser.add_argument("--data-root", help="root of that data set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation (splits, init, shuffling)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    _add_output_args(parser)


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--output", help="also write the results (with every setting) to this JSON file")
    parser.add_argument("--record", action="store_true",
                        help="also store the results in the run's summary.json under evals.KEY")
    parser.add_argument("--key", help="name under which --record stores the results (default: from the settings)")


def _add_layer_args(parser: argparse.ArgumentParser) -> None:
    """``--layers`` on ``sslkd eval knn`` and ``sslkd eval linear``."""
    parser.add_argument("--layers", help="evaluate these layers one by one: all, or comma-separated 1-based numbers, "
                                         "block names or final (multi-exit, SDSSL Fig. 3)")


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the protocol's command (its parser set ``args.run``)."""
    return args.run(args)


def _timed(fn, *args, **kwargs) -> tuple[dict, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _save(args: argparse.Namespace, results: dict, default_key: str, wall_time_s: float) -> None:
    """--output FILE.json and --record (summary.json evals[KEY]) of one evaluation."""
    from sslkd.eval.checkpoints import save_results

    save_results(args.checkpoint, results, args.key or default_key, wall_time_s, output=args.output,
                 record=args.record)


def _finish(args: argparse.Namespace, results: dict, default_key: str, wall_time_s: float, headline: str,
            describe) -> int:
    """Write --output, --record, and print one line per member (``describe(result)`` says how it was made)."""
    from sslkd.eval.checkpoints import jsonable

    _save(args, results, default_key, wall_time_s)
    if args.json:
        print(json.dumps(jsonable(results), indent=2))
        return 0
    for name, result in results.items():
        print(f"{name}: {headline} {result[headline]:.2f} ({describe(result)})"
              if isinstance(result.get(headline), float) else f"{name}: {describe(result)}")
    return 0


def _print_layers(args: argparse.Namespace, results: dict, protocol: str) -> int:
    from sslkd.eval.layers import layer_rows

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for row in layer_rows(results, protocol):
        print(f"{row['member']} layer {row['layer']:>2} ({row['block']}): {protocol} top-1 {row['top1']:.2f}")
    return 0


def cmd_knn(args: argparse.Namespace) -> int:
    from sslkd.eval.layers import knn_per_layer
    from sslkd.eval.protocol import knn_of_checkpoint

    if args.layers:
        return _print_layers(args, knn_per_layer(args.checkpoint, args.layers, args.member, args.data_name,
                                                 args.data_root, encoder=args.encoder), "knn")
    results = knn_of_checkpoint(args.checkpoint, member=args.member, data_name=args.data_name, data_root=args.data_root,
                                encoder=args.encoder)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, result in results.items():
            others = ", ".join(f"k={k}: {v:.2f}" for k, v in result["knn"].items())
            print(f"{name}: k-NN top-1 {result['knn_top1']:.2f}, top-5 {result['knn_top5']:.2f} "
                  f"(k=20, T={result['protocol']['knn_temperature']}, {result['protocol']['encoder']}; {others})")
    return 0


def cmd_linear(args: argparse.Namespace) -> int:
    """Run ``sslkd eval linear`` and print one line per member (or the full results as JSON)."""
    from sslkd.eval.layers import linear_per_layer
    from sslkd.eval.linear import linear_key, linear_of_checkpoint

    if args.layers:
        return _print_layers(args, linear_per_layer(args.checkpoint, args.layers, args.member, args.probe,
                                                    args.data_name, args.data_root, args.epochs, args.augment,
                                                    args.seed), "linear")
    results, wall = _timed(linear_of_checkpoint, args.checkpoint, member=args.member, protocol=args.probe,
                           data_name=args.data_name, data_root=args.data_root, epochs=args.epochs,
                           augment=args.augment, n_last_blocks=args.n_last_blocks, seed=args.seed)
    _save(args, results, linear_key(args.probe, args.data_name, args.epochs, args.augment), wall)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for name, result in results.items():
        p = result["protocol"]
        chosen = (f"epoch {p['best_epoch']} chosen by validation top-1 {p['val_top1']:.2f}" if p["n_val"]
                  else "final epoch")
        print(f"{name}: linear top-1 {result['linear_top1']:.2f} ({p['name']} protocol, {p['epochs']} epochs, "
              f"{p['optimizer']} lr {p['lr']:g}, batch {p['batch_size']}, augmentation: {p['augmentation']}; {chosen})")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from sslkd.eval.classify import classify_checkpoint

    results = classify_checkpoint(args.checkpoint, args.data_name, args.data_root)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for name, top1 in results["members"].items():
        print(f"{name}: test top-1 {top1:.2f}")
    print(f"ensemble: test top-1 {results['ensemble_top1']:.2f} ({results['n_test']} test images)")
    return 0


def cmd_semisup(args: argparse.Namespace) -> int:
    from sslkd.eval.semisup import fraction_key, semisup_of_checkpoint

    results, wall = _timed(semisup_of_checkpoint, args.checkpoint, args.fraction, args.member, args.recipe,
                           args.data_name, args.data_root, args.epochs, args.batch_size, args.seed, args.device)
    return _finish(args, results, fraction_key(args.fraction, args.recipe), wall, "top1", lambda r: (
        f"{r['protocol']['label_fraction']:g} of the labels, {r['protocol']['n_train']} images, "
        f"{r['protocol']['epochs']} epochs, {r['protocol']['name']} protocol"))


def cmd_transfer(args: argparse.Namespace) -> int:
    from sslkd.errors import UserError
    from sslkd.eval.transfer import transfer_key, transfer_of_checkpoint

    if not args.data_name:
        raise UserError("sslkd eval transfer needs the target data set: pass --data NAME (and --data-root)")
    results, wall = _timed(transfer_of_checkpoint, args.checkpoint, args.data_name, args.data_root, args.member,
                           args.mode, args.recipe, args.epochs, args.image_size, args.seed, args.device)
    return _finish(args, results, transfer_key(args.data_name, args.mode, args.recipe), wall, "top1", lambda r: (
        f"{r['protocol']['source_dataset']} -> {r['protocol']['target_dataset']}, {r['protocol']['mode']}, "
        f"{r['protocol']['name']} protocol, {r['protocol']['epochs']} epochs"))


def cmd_noisy(args: argparse.Namespace) -> int:
    from sslkd.eval.noisy import noisy_key, noisy_of_checkpoint

    results, wall = _timed(noisy_of_checkpoint, args.checkpoint, args.rate, args.member, args.probe, args.data_name,
                           args.data_root, args.epochs, args.exclude_true, args.seed, args.device)
    return _finish(args, results, noisy_key(args.rate, args.probe, args.exclude_true), wall, "top1", lambda r: (
        f"noise rate {r['protocol']['noise_rate']:g}, {100 * r['protocol']['wrong_label_fraction']:.1f}% wrong "
        f"labels, {r['protocol']['name']} probe"))


def cmd_consistency(args: argparse.Namespace) -> int:
    from sslkd.eval.consistency import consistency_of_checkpoints

    results, wall = _timed(consistency_of_checkpoints, args.checkpoint, args.member, args.other_checkpoint,
                           args.other_member, args.data_name, args.data_root, args.device)
    return _finish(args, results, "consistency", wall, "consistency", lambda r: (
        f"fraction of equal k-NN predictions with {r['protocol']['other_member']} of "
        f"{r['protocol']['other_checkpoint']}; k-NN top-1 {r['knn_top1']:.2f} / {r['other_knn_top1']:.2f}"))


def cmd_attention(args: argparse.Namespace) -> int:
    from sslkd.eval.attention import attention_of_checkpoint, plot_distances

    results, wall = _timed(attention_of_checkpoint, args.checkpoint, args.member, args.data_name, args.data_root,
                           args.num_images, seed=args.seed, device=args.device)
    if args.plot:
        plot_distances(results, args.plot)
    return _finish(args, results, "attention_distance", wall, "none", lambda r: (
        "mean attention distance (px) " + ", ".join(f"{layer} {value:.1f}"
                                                    for layer, value in r["mean_attention_distance"].items())))


def cmd_tsne(args: argparse.Namespace) -> int:
    from sslkd.eval.tsne import tsne_of_checkpoint

    results, wall = _timed(tsne_of_checkpoint, args.checkpoint, args.out, args.member, args.data_name,
                           args.data_root, args.num_images, args.seed, args.device)
    return _finish(args, results, "tsne", wall, "png", lambda r: (
        f"t-SNE of {r['protocol']['n_images']} test images written to {r['png']}"))


def cmd_multiexit(args: argparse.Namespace) -> int:
    from sslkd.eval.layers import multiexit

    paths = multiexit(args.checkpoints, args.multiexit_protocol, args.out, args.layers, args.member, args.probe,
                      args.epochs, args.augment)
    print(paths["md"].read_text())
    for path in paths.values():
        print(path)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    import pandas as pd

    from sslkd.eval.analysis import analyze

    paths = analyze(args.checkpoints, args.out, args.member, args.max_images, args.seed)
    rows = pd.read_csv(paths["csv"])
    columns = ["run", "layer", "alignment", "uniformity", "negative_alignment", "alignment_ratio",
               "uniformity_alignment_ratio"]
    print(rows[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for path in paths.values():
        print(path)
    return 0
