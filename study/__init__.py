"""The research workflow: sample a running LDA server, judge or score every answer, report.

`lda study` measures how often a behaviour shows per alpha (with a detector); `lda explore` ranks
samples by how much post-training favoured their tokens (no detector needed). One module per job:

    config     typed, validated settings          prompts    the prompts sampled
    client     HTTP calls to the server(s)        pool       concurrent jobs, resumable
    store      samples.jsonl on disk              settings   study.json: what the samples mean
    stats      intervals, coherence, AUROC        summary    the per-alpha table, JSON and plot
    detectors  hit or miss for one answer         scoring    per-token attribution from the server
    ranking    order samples by their scores      report     the self-contained HTML report
    runner     run_study, the whole workflow      cli        `lda study` / `lda explore`
"""
