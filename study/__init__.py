"""The research workflow: sample a running LDA server, judge or score every answer, report.

`lda study` measures how often a behaviour shows per alpha (with a detector); `lda explore` ranks
samples by how much post-training favoured their tokens and names what changed (no detector
needed); `lda mine` names it again from a finished study's files; `lda monitor` follows a training
run's checkpoints; `lda mcp` offers all of it to an agent. The package is four rooms over three
shared modules. Every room may import the shared modules; analysis no other room; collect analysis
(and, of output, only the folder layout in `output.files`); output analysis; commands everything.
`tests/test_layout.py` states these rules and checks that this map names every module:

    errors       StudyError (stop) and SampleError (skip one sample)
    config       typed, validated settings
    records      Prompt, Sample, SampleScore, Checkpoint, CorpusText: what the stages pass each other

    analysis/    pure functions over records: no file, no network, no printing
      stats        intervals, coherence, AUROC
      ranking      order samples by their scores
      themes       phrases of high-diff tokens -> themes
      promoted     promoted tokens -> themes
      naming       a study's scores -> themes and token aggregates
      estimate     the path estimate: the rate at an alpha, fitted along the alphas sampled
      plan         `--alphas auto`: which alpha to sample next, from the hits so far

    collect/     talking to servers and keeping what they answer
      server       the one server lifecycle: start on a free loopback port, wait for /health, stop
      client       the HTTP calls of a study
      prompts      the prompts sampled
      detectors    hit or miss for one answer
      pool         concurrent jobs, resumable
      planned      draws an `--alphas auto` plan step by step, resuming from the samples on disk
      store        samples.jsonl
      scoring      per-token attribution from the server, scores.jsonl
      settings     study.json: what the samples mean
      hypothesis   the optional LLM reading of the themes
      checkpoints  a training run's checkpoints, in step order
      checkpoint_serving  a checkpoint in front of a study: loaded at runtime, or a pair of its own
      corpus       a corpus file, and the server calls that score and extend it
      lda_api      one HTTP call per question an agent asks

    output/      what is written for people, and where
      files        every file name of a study folder, and the one atomic write
      summary      the per-alpha table, summary.json and the plot
      estimate_plot  the path estimate drawn on the plot
      report       the self-contained HTML report
      monitor_report  monitor.json, monitor.png, monitor.html
      corpus_report   what `lda mine --corpus` writes and prints

    commands/    the command lines, and the workflows they run
      base         the parser helpers, shared flag groups, errors -> exit codes
      study        `lda study`
      explore      `lda explore`
      workflow     run_study, the whole workflow of one study
      mine         `lda mine STUDY_DIR`
      corpus       `lda mine --corpus`
      monitor      `lda monitor RUN_DIR`
      mcp          `lda mcp`: the tools for an agent
      mcp_tools    what each of those tools does
"""
