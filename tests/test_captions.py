import pytest

from latentforge.operators.captions import caption_id, clean_caption, final_caption


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The video shows a cat on a mat.", "A cat on a mat."),
        ("In this video, a dog runs across a field.", "A dog runs across a field."),
        ("This clip depicts two people talking", "Two people talking"),
        ("The video begins with a shot of a city.", "A shot of a city."),
        ("the image   features\na red ball", "A red ball"),
        ("We see a car driving at night.", "A car driving at night."),
        ("A man in the video shows a card.", "A man in the video shows a card."),  # not an opener
        ("  plain caption  ", "Plain caption"),
        ("The video", "The video"),  # nothing but an opener: kept, not emptied
    ],
)
def test_clean_caption(raw, expected):
    assert clean_caption(raw) == expected


def test_final_caption_trigger_word_and_ids():
    assert final_caption("The video shows a cat.", trigger_word="SKS") == "SKS A cat."
    assert final_caption("The video shows a cat.", strip_openers=False) == "The video shows a cat."
    assert final_caption("", trigger_word="SKS") == ""
    # same final text -> same id; different text -> different id
    assert caption_id(final_caption("The video shows a cat.")) == caption_id("A cat.")
    assert caption_id("A cat.") != caption_id("A dog.")
