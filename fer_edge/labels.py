"""The seven emotions and the two orders in which models and datasets list them."""
from __future__ import annotations

from .errors import DataError

# Kaggle folder layout (and Keras flow_from_directory): alphabetical.
KAGGLE_ORDER: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
# The original fer2013.csv `emotion` column: 0..6 in this order.
FER2013_ORDER: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
EMOTIONS = KAGGLE_ORDER

LABEL_ORDERS = {"kaggle": KAGGLE_ORDER, "fer2013": FER2013_ORDER}

# Folder names seen in the wild for the same classes.
_SYNONYMS = {
    "anger": "angry", "disgusted": "disgust", "fearful": "fear", "scared": "fear",
    "happiness": "happy", "sadness": "sad", "surprised": "surprise", "calm": "neutral",
}


def canonical(name: str) -> str:
    key = name.strip().lower()
    return _SYNONYMS.get(key, key)


def parse_labels(text: str) -> tuple[str, ...]:
    """`--labels` value: a named order ('kaggle', 'fer2013') or a comma-separated list."""
    key = text.strip().lower()
    if key in LABEL_ORDERS:
        return LABEL_ORDERS[key]
    labels = tuple(canonical(part) for part in text.split(",") if part.strip())
    if len(labels) < 2:
        raise DataError(f"--labels {text!r}: give 'kaggle', 'fer2013' or a comma-separated list of class names")
    if len(set(labels)) != len(labels):
        raise DataError(f"--labels {text!r}: a class name appears twice")
    return labels
