"""Where an edited state's L1 growth comes from (``assistant.state.l1.growth_split``): per
edited layer, the first-order part mean(sign(W0) Delta) / mean|W0| and the part from entries
whose sign the change flips, with rms(Delta) against mean|W0|. It reads the state only.

    LIVEDIT_HOME=.livedit-test-home python -m benchmarks.l1_split --state-dir DIR \\
        --out benchmarks/results/l1-split-NAME.json
"""

from __future__ import annotations

import argparse
import dataclasses

from assistant.editing.editor import Editor
from assistant.state.l1 import growth_split
from benchmarks.common import common_arguments, started, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser)
    args, config, started_in = started(parser)
    with Editor.open(config, state_dir=args.state_dir, progress=False) as editor:
        current = editor.current_weights()
        layers = {layer: growth_split(W, editor.W0[layer]) for layer, W in current.items()
                  if not W.equal(editor.W0[layer])}
        active = len(editor.edits("active"))
    for layer, split in layers.items():
        print(f"layer {layer}: growth {100 * split['growth']:.2f}% = first order {100 * split['first_order']:.2f} "
              f"+ sign flips {100 * split['sign_flips']:.2f}; rms(Delta) {split['rms_delta']:.4f}, "
              f"mean|W0| {split['mean_abs_w0']:.4f}")
    write_json(args.out, {"state_dir": args.state_dir, "active_edits": active, "layers": layers,
                          "config": dataclasses.asdict(config.editing), "environment": started_in})


if __name__ == "__main__":
    main()
