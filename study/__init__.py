"""The research workflow: sample a running LDA server, judge or score every answer, report.

`lda study` measures how often a behaviour shows per alpha (with a detector); `lda explore` ranks
samples by how much post-training favoured their tokens and names what changed (no detector
needed); `lda mine` names it again from a finished study's files. One module per job:

    config     typed, validated settings          prompts    the prompts sampled
    client     HTTP calls to the server(s)        pool       concurrent jobs, resumable
    store      samples.jsonl on disk              settings   study.json: what the samples mean
    stats      intervals, coherence, AUROC        summary    the per-alpha table, JSON and plot
    detectors  hit or miss for one answer         scoring    per-token attribution from the server
    ranking    order samples by their scores      report     the self-contained HTML report
    runner     run_study, the whole workflow      cli        `lda study` / `lda explore`
    themes     phrases -> themes (pure functions)  naming     a study's scores -> themes, tokens
    hypothesis the optional LLM reading of themes  mine       `lda mine STUDY_DIR`
"""
