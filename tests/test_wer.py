from wer import normalise, word_error_rate


def test_identical_text_after_normalisation_has_no_errors():
    assert word_error_rate("Ask not, what your country!", "ask not what your country") == 0.0


def test_substitution_deletion_insertion_each_count_once():
    assert word_error_rate("a b c d", "a x c d") == 0.25
    assert word_error_rate("a b c d", "a c d") == 0.25
    assert word_error_rate("a b c d", "a b c d e") == 0.25


def test_umlauts_and_slashes():
    assert normalise("und/oder Kopien für") == ["und", "oder", "kopien", "für"]
