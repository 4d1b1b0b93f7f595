"""Analysis: pure functions over a study's records (statistics, ranking, themes); no file, no network, no printing."""
