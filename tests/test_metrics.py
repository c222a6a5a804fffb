"""The nine metrics on hand-made predictions, and the loss applied once to probabilities."""
import pytest
import torch

from medqk.metrics import METRIC_NAMES, confusion, e_measure, image_losses, image_metrics, segmentation_loss


def maps(*rows):
    """[1, 1, H, W] float map from rows of 0/1."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


TRUTH = maps([1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0])             # 4 target pixels
PREDICTION = maps([1, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]) * 0.9  # TP 3, FP 1, FN 1, TN 11


def test_confusion_counts_at_threshold_half():
    assert confusion(PREDICTION, TRUTH).tolist() == [[3, 1, 1, 11]]
    assert confusion(maps([0.5, 0.49]), maps([0.5, 0.2])).tolist() == [[1, 0, 0, 1]]


def test_metric_values_from_known_counts():
    m = {name: float(value) for name, value in image_metrics(PREDICTION, TRUTH).items()}
    assert set(m) == set(METRIC_NAMES)
    assert m["mIoU"] == pytest.approx(3 / 5)
    assert m["DSC"] == pytest.approx(6 / 8)
    assert m["accuracy"] == pytest.approx(14 / 16)
    assert m["sensitivity"] == m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(11 / 12)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["F-beta"] == pytest.approx(1.3 * 0.75 * 0.75 / (0.3 * 0.75 + 0.75))


def test_f_beta_weights_precision_over_recall():
    precise = image_metrics(maps([1, 0, 0, 0]), maps([1, 1, 0, 0]))   # precision 1, recall 0.5
    assert float(precise["F-beta"]) == pytest.approx(1.3 * 0.5 / (0.3 + 0.5))
    assert float(precise["F-beta"]) > float(precise["DSC"])


def test_perfect_and_inverted_predictions():
    perfect = image_metrics(TRUTH, TRUTH)
    assert all(float(v) == pytest.approx(1.0) for v in perfect.values())
    inverted = image_metrics(1 - TRUTH, TRUTH)
    for name in ("mIoU", "DSC", "accuracy", "sensitivity", "specificity", "precision", "F-beta", "E-measure"):
        assert float(inverted[name]) == pytest.approx(0.0), name


def test_empty_mask_and_empty_prediction_count_as_perfect():
    empty = torch.zeros(1, 1, 4, 4)
    assert all(float(v) == 1.0 for v in image_metrics(empty, empty).values())


def test_missed_target_with_nothing_predicted_scores_zero():
    m = image_metrics(torch.zeros(1, 1, 4, 4), TRUTH)
    assert float(m["precision"]) == 0.0 and float(m["DSC"]) == 0.0 and float(m["specificity"]) == 1.0


def test_e_measure_of_a_false_alarm_on_an_empty_mask_is_the_fraction_right():
    assert float(e_measure(TRUTH, torch.zeros_like(TRUTH))) == pytest.approx(12 / 16)


def test_e_measure_lies_between_zero_and_one_and_ranks_better_predictions_higher():
    good, bad = e_measure(PREDICTION, TRUTH), e_measure(maps([0, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]), TRUTH)
    assert 0 < float(bad) < float(good) < 1


def test_metrics_are_per_image():
    prediction = torch.cat([TRUTH, 1 - TRUTH])
    truth = torch.cat([TRUTH, TRUTH])
    assert image_metrics(prediction, truth)["DSC"].tolist() == [1.0, 0.0]


def test_loss_is_near_zero_for_a_confident_right_answer():
    # Applied once to the probabilities. The release's extra sigmoid would map 0 and 1 to 0.5
    # and 0.73, and the loss could not go below about 0.8 however right the network is.
    probabilities = TRUTH.clamp(1e-4, 1 - 1e-4)
    assert float(segmentation_loss(probabilities, TRUTH)) < 1e-3
    assert float(segmentation_loss(torch.sigmoid(probabilities), TRUTH)) > 0.5


def test_loss_is_bce_plus_dice_per_image():
    p = torch.full((1, 1, 4, 4), 0.8)
    bce = -(4 * torch.log(torch.tensor(0.8)) + 12 * torch.log(torch.tensor(0.2))) / 16
    dice = 1 - (2 * 0.8 * 4 + 1e-5) / (0.8 * 16 + 4 + 1e-5)
    assert float(image_losses(p, TRUTH)[0]) == pytest.approx(float(bce) + dice, rel=1e-5)


def test_loss_has_gradients_towards_the_truth():
    p = torch.full((1, 1, 4, 4), 0.5, requires_grad=True)
    segmentation_loss(p, TRUTH).backward()
    assert (p.grad[TRUTH.bool()] < 0).all() and (p.grad[~TRUTH.bool()] > 0).all()
