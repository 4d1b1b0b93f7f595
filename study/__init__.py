"""The research workflow: sample a running LDA server, judge or score every answer, report.

`lda study` measures how often a behaviour shows per alpha (with a detector); `lda explore` ranks
samples by how much post-training favoured their tokens and names what changed (no detector
needed); `lda mine` names it again from a finished study's files; `lda monitor` follows a training
run's checkpoints. The package is four rooms over a few shared modules; a module imports its own
room, the shared modules and the rooms below it (`tests/test_layout.py` states the rules):

    errors      StudyError (stop) and SampleError (skip one sample)
    config      typed, validated settings
    records     Prompt, Sample, SampleScore, Checkpoint: what the stages pass each other

    collect/    talking to servers and keeping what they answer
      client       HTTP calls to the server(s)          prompts      the prompts sampled
      detectors    hit or miss for one answer           pool         concurrent jobs, resumable
      scoring      per-token attribution from the server store        samples.jsonl on disk
      settings     study.json: what the samples mean    checkpoints  a training run's checkpoints
      hypothesis   the optional LLM reading of themes   checkpoint_serving  one checkpoint in front of a study
      lda_api      one HTTP call per question an agent asks (generate, score, pair)
    analysis/   pure functions over records: no file, no network, no printing
      stats        intervals, coherence, AUROC          ranking      order samples by their scores
      themes       phrases -> themes                    promoted     promoted tokens -> themes
      naming       a study's scores -> themes, tokens
    output/     what a study writes for people
      summary      the per-alpha table, JSON and plot   report       the self-contained HTML report
      monitor_report  what `lda monitor` writes
    commands/   the command lines, and the workflows they run
      study        `lda study`                          explore      `lda explore`
      workflow     run_study, the whole workflow        mine         `lda mine STUDY_DIR`
      corpus       `lda mine --corpus`                  monitor      `lda monitor RUN_DIR`
      mcp          `lda mcp`: the tools for an agent    mcp_tools    what each of those tools does
"""
