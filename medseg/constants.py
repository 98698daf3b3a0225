"""Task constants shared by every stage (labels, their order, metric weights, windows)."""

# Order of the six rows per image in the Kaggle CSVs, and of every label/probability vector here.
LABELS: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
    "any",
)
SUBTYPES: tuple[str, ...] = LABELS[:5]

# Kaggle metric / paper loss weights: 2 for `any`, 1 for the others.
CLASS_WEIGHTS: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 2.0)

# The paper's three HU windows (centre, width): brain, subdural/blood, soft tissue.
DEFAULT_WINDOWS: tuple[tuple[int, int], ...] = ((40, 80), (80, 200), (40, 380))

# Kaggle file-name conventions.
TRAIN_DIR = "stage_2_train"
TEST_DIR = "stage_2_test"
TRAIN_CSV = "stage_2_train.csv"
SAMPLE_SUBMISSION_CSV = "stage_2_sample_submission.csv"
TEST_TRUTH_CSV = "stage_2_test_truth.csv"
