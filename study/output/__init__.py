"""Output: what a study writes for people (the summary, the HTML reports, the plots)."""
