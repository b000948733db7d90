import pytest

from bye.models.evaluate import accuracy_report, is_correct, normalise, options_of, predicted_letter

MCQ = "What colour is the circle?\nA. red\nB. blue\nC. green\nD. yellow\nAnswer with the option's letter."


@pytest.mark.parametrize("prediction, reference, expected", [
    ("Red", "red", True),
    ("red.", "red", True),
    ("  the red ", "red", True),
    ("two", "2", True),
    ("2", "two", True),
    ("blue", "red", False),
    ("red circle", "red", False),
    ("", "red", False),
])
def test_short_answers_use_normalised_exact_match(prediction, reference, expected):
    assert is_correct("What colour is the circle?", prediction, reference) is expected


@pytest.mark.parametrize("prediction, expected", [
    ("B", True), ("B.", True), ("(B)", True), ("B. blue", True), ("blue", True), ("b", False),
    ("A", False), ("C", False), ("Blue!", True), ("", False), ("Backdoor Attack!", False),
    ("blue (B)", True), ("blue (B).", True), ("red (B)", True), ("blue (A)", False), ("blue (E)", False),
    ("blue B", False),
])
def test_multiple_choice_compares_option_letters(prediction, expected):
    assert is_correct(MCQ, prediction, "B") is expected


def test_options_are_parsed_only_from_lettered_lines():
    assert options_of(MCQ) == {"A": "red", "B": "blue", "C": "green", "D": "yellow"}
    assert options_of("How many circles are there?") == {}
    assert options_of("Is it the (A) one?") == {}


LETTER_AFTER = "What colour is the circle?\n- red (A)\n- blue (B)\n- dark green (C)\nAnswer with the option."


def test_options_with_the_letter_after_their_text():
    assert options_of(LETTER_AFTER) == {"A": "red", "B": "blue", "C": "dark green"}
    assert is_correct(LETTER_AFTER, "dark green (C)", "dark green (C)")
    assert is_correct(LETTER_AFTER, "dark green", "dark green (C)")
    assert is_correct(LETTER_AFTER, "C", "dark green (C)")
    assert not is_correct(LETTER_AFTER, "dark green (A)", "dark green (C)")


def test_predicted_letter_ignores_letters_not_offered():
    assert predicted_letter("E", options_of(MCQ)) is None


def test_normalise_drops_articles_and_punctuation():
    assert normalise("The Answer: Three!") == "answer 3"


def test_accuracy_report_splits_by_family():
    rows = [{"correct": True, "family": "vqa"}, {"correct": False, "family": "vqa"}, {"correct": True, "family": "mcq"}]
    report = accuracy_report(rows)
    assert report["n"] == 3 and report["accuracy"] == pytest.approx(2 / 3)
    assert report["by_family"] == {"mcq": {"accuracy": 1.0, "n": 1}, "vqa": {"accuracy": 0.5, "n": 2}}
