"""The examples (and adapt's lists of methods and domain-label modes) each command's --help ends
with. Literal text, so that --help needs no PyTorch; tests/test_architecture.py checks the lists
against the registries."""

ADAPT_EPILOG = """
**Examples**

    golabels adapt photos/studio photos/field --backbone resnet50
    golabels adapt src/ tgt/ --method dann --iters 2000 --eval-dir tgt_labeled/
    golabels adapt src/ tgt/ --backbone tf_efficientnet_lite0 --weights w.pth

On a CPU, train on the backbone's features, computed once (minutes, not days):

    golabels adapt src/ tgt/ --freeze-backbone --backbone tf_efficientnet_lite0

Replay a run, or continue one after Ctrl-C or a crash:

    golabels adapt --config runs/adapt/exp/config.yaml
    golabels adapt --resume runs/adapt/exp

**Progress terms**: cls, the source's classification loss; adv, the discriminator's loss (about 0.69 when it cannot tell the domains apart); disc, its accuracy (0.5: aligned); relab s/t, the shares of source and target rows whose domain label was changed (not shown under fixed labels); tgt-loss, the losses on the target's predictions; tgt-acc, --eval-dir accuracy; lambda, the gradient reversal's weight.

**Methods** (`--method`: an alignment term, losses on the target's predictions, or both joined by +, e.g. cdan-e+mcc; docs/methods.md says when to pick which)

- cdan-e: CDAN with entropy-weighted samples (Long et al. 2018), the default when the backbone trains
- cdan: discriminator conditioned on features x predictions (Long et al. 2018)
- dann: domain-adversarial training on the features (Ganin et al. 2016)
- dann-e: DANN with CDAN+E's entropy weights
- gvb: gradually vanishing bridges on classifier and discriminator (GVB-GD, Cui et al. 2020)
- asan: CDAN+E, spectrally normalized discriminator, spectral alignment (Raab et al. 2020)
- source-only: no adaptation, the baseline every method must beat
- mcc: minimum class confusion on the target's predictions (Jin et al. 2020); no discriminator
- bnm: batch nuclear-norm maximization on the target's predictions (Cui et al. 2020)
- im: information maximization on the target's predictions (SHOT, Liang et al. 2020)
- aad: attracting and dispersing: each target prediction pulled toward its nearest target neighbours' (Yang et al. 2022)

**Domain labels** (`--domain-labels`): fixed (default; plain), go (Go-labels), soft (no rounding), zero-out (drop fooled samples).
"""


EVAL_EPILOG = """
**Examples**

    golabels eval runs/adapt/exp photos/field_labeled --plots
    golabels eval runs/adapt/exp/model.safetensors labeled/ --json
    golabels eval runs/adapt/exp labeled/ --confusion confusion.csv
"""


DEMO_EPILOG = """
**Example**

    golabels demo                 # about two minutes on two CPU cores
    golabels demo --seed 1 --out /tmp/demo --json
"""


EXPORT_EPILOG = """
**Examples**

    golabels export runs/adapt/exp --onnx      # runs/adapt/exp/model.onnx
    golabels export runs/adapt/exp --onnx -o ship/model.onnx --batch 1

The graph takes a float32 NCHW batch, already resized, center-cropped and normalized, and returns
`logits` and `probabilities`. The file's metadata holds the class names and that preprocessing
(docs/deployment.md shows how to use it from plain Python).
"""


PREDICT_EPILOG = """
**Examples**

    golabels predict runs/adapt/exp/model.onnx photos/ > labels.csv
    find photos -name '*.jpg' | golabels predict model.onnx - --top-k 3
    find photos -name '*.jpg' -print0 | golabels predict model.onnx - -0
    golabels predict runs/adapt/exp img1.png img2.png --format jsonl

`-0`: paths end with NUL, so any file name works. CSV columns: path, label, confidence (then top1_label, top1_probability, ... with --top-k).
JSON lines are UTF-8: a name that is not gets `\\xNN` escapes, its bytes in `path_base64` or `label_base64`.
With an .onnx model only onnxruntime runs: PyTorch is not needed.
"""


COMPARE_EPILOG = """
**Examples**

    golabels compare runs/adapt/fixed runs/adapt/go --eval-dir labeled_target/
    golabels compare runs/go-seed* runs/fixed-seed* --eval-dir labeled/ --plot go.png

Runs that differ only in their seed form a group; each group is compared with the first on the
same labeled images (a bootstrap interval and a paired permutation test). Even 30 to 100 labeled
target images answer "does this option help on my data" better than a validator.
"""

REPORT_EPILOG = """
**Examples**

    golabels report runs/adapt/exp          # tables; PNG plots in the run
    golabels report runs/adapt/exp --json   # the same figures as JSON
"""
