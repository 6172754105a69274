"""Allowed values of the options that several stages share, named once."""

DEVICES = ("auto", "cpu", "cuda")  # auto = cuda when torch sees a GPU, else cpu
AMP_MODES = ("none", "bf16", "fp16")  # autocast dtype (cuda; bf16 also on CPUs with native bf16); none = float32
SPLITS = ("train", "val", "test", "restval")  # Karpathy splits; restval is the paper's "rV"
FEATURE_DTYPES = ("float32", "float16")  # storage dtype of a feature store
CROP_COUNTS = (1, 10)  # 1 = center crop (paper 1C), 10 = TenCrop (paper 10C)
DECODE_DEVICES = ("cpu", "gpu")  # where extraction decodes JPEGs: DataLoader workers, or batched on the GPU

# Image features the train stage reads from a store (see train/data.py).
FEATURE_MODES = ("1c", "10c", "10c-random", "10c-set", "regions")
SET_FEATURE_MODES = ("10c-set", "regions")  # an image is a set [K, D] pooled by the image pool
IMAGE_POOLS = ("mean", "adaptive", "gpo")
TEXT_POOLS = ("last", "mean", "adaptive", "gpo")

# The loss: how negatives combine, the similarity, where the hinge margin comes from (train/losses/).
LOSSES = ("sh", "mh", "group", "infonce")
SIMILARITIES = ("cosine", "order")
MARGIN_SOURCES = ("constant", "lseh")
REDUCTIONS = ("sum", "mean")
GROUP_K_MODES = ("adaptive", "constant", "random")

RC_MODES = ("paper", "resized")  # fine-tuning's random crops (train/finetune/data.py)
TOKENIZERS = ("basic", "nltk")  # caption tokenizers (train/text.py): ours, the reference code's nltk
# How a model with its own CNN prepares a raw image (extract/transforms.py): the paper's 256x256 resize, or
# the reference code's eval transform (shorter side 256, aspect kept), both then a center 224 crop.
IMAGE_RESIZES = ("square", "keep-aspect")
