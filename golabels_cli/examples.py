"""The examples (and adapt's lists of methods and domain-label modes) each command's --help ends
with. Literal text, so that --help needs no PyTorch; tests/test_architecture.py checks the lists
against the registries."""

ADAPT_EPILOG = """
**Examples**

    golabels adapt photos/studio photos/field --backbone resnet50
    golabels adapt src/ tgt/ --method dann --domain-labels fixed --iters 2000 --eval-dir tgt_labeled/
    golabels adapt src/ tgt/ --backbone tf_efficientnet_lite0 --weights lite0.safetensors
    golabels adapt src/ tgt/ --method cdan-e+mcc --freeze-backbone --weights lite0.safetensors
    golabels adapt --config runs/adapt/exp/config.yaml      # replay a run
    golabels adapt --resume runs/adapt/exp                   # continue after Ctrl-C or a crash

**Methods** (`--method`: an alignment term, losses on the target's predictions, or both joined by +, e.g. cdan-e+mcc; docs/methods.md says when to pick which)

- cdan-e: CDAN with entropy-weighted samples (Long et al. 2018), the default
- cdan: discriminator conditioned on features x predictions (Long et al. 2018)
- dann: domain-adversarial training on the features (Ganin et al. 2016)
- dann-e: DANN with CDAN+E's entropy weights
- gvb: gradually vanishing bridges on classifier and discriminator (GVB-GD, Cui et al. 2020)
- asan: CDAN+E, spectrally normalized discriminator, spectral alignment (Raab et al. 2020)
- source-only: no adaptation, the baseline every method must beat
- mcc: minimum class confusion on the target's predictions (Jin et al. 2020); no discriminator
- bnm: batch nuclear-norm maximization on the target's predictions (Cui et al. 2020)
- im: information maximization on the target's predictions (SHOT, Liang et al. 2020)

**Domain labels** (`--domain-labels`): fixed (default; plain), go (Go-labels), soft (no rounding), zero-out (drop fooled samples).
"""


EVAL_EPILOG = """
**Examples**

    golabels eval runs/adapt/exp photos/field_labeled
    golabels eval runs/adapt/exp/model.safetensors labeled/ --confusion confusion.csv --json
"""


DEMO_EPILOG = """
**Example**

    golabels demo                 # about two minutes on two CPU cores
    golabels demo --seed 1 --out /tmp/demo --json
"""


EXPORT_EPILOG = """
**Examples**

    golabels export runs/adapt/exp --onnx                   # writes runs/adapt/exp/model.onnx
    golabels export runs/adapt/exp --onnx --output ship/classifier.onnx --batch 1

The graph takes a float32 NCHW batch, already resized, center-cropped and normalized, and returns
`logits` and `probabilities`. The file's metadata holds the class names and that preprocessing
(docs/deployment.md shows how to use it from plain Python).
"""


PREDICT_EPILOG = """
**Examples**

    golabels predict runs/adapt/exp/model.onnx photos/ > labels.csv
    find photos -name '*.jpg' | golabels predict model.onnx - --format jsonl --top-k 3
    find photos -name '*.jpg' -print0 | golabels predict model.onnx - -0      # any file name
    golabels predict runs/adapt/exp img1.png img2.png --device cpu

CSV columns: path, label, confidence (then top1_label, top1_probability, ... with --top-k).
JSON lines are UTF-8: a file name that is not gets U+FFFD in `path` and its bytes in `path_base64`.
With an .onnx model only onnxruntime runs: PyTorch is not needed.
"""


REPORT_EPILOG = """
**Examples**

    golabels report runs/adapt/exp            # tables on stdout, PNG plots in runs/adapt/exp
    golabels report runs/adapt/exp --json     # the same figures as one JSON document
"""
