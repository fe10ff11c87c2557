"""PsyDT-LoRA: fine-tune Qwen3 with LoRA on PsyDTCorpus and talk to the result.

Modules, by what they hold:
    errors    -- the one exception type users see, and the CLI edge that prints it
    cli       -- the Chinese --help both scripts share
    files     -- atomic writes, reading user JSON, local path checks
    plots     -- PNG charts (loss curve; helpers for the report's chart)
    hub       -- fetching the model and the PsyDTCorpus files (modelscope / huggingface)
    dialogues -- reading and validating dialogue files, picking eval/test items
    prompt    -- the one prompt rendering shared by training and inference
    samples   -- dialogues -> token ids + labels (assistant-only loss), truncation
    packing   -- the shared_prefix layout: packs, rows of several samples (--packing), padding, the tree mask
                 (4-D or BlockMask), the collator
    sample_cache -- built samples kept as a datasets.Dataset, keyed by a fingerprint
    models    -- loading tokenizer / base model / adapter
    loss      -- the training loss: the LM head at supervised positions, chunked linear_cross_entropy
    training  -- LoRA + Trainer + SwanLab + outputs
    generation -- streaming generation and its settings in words
    chat      -- the interactive terminal chat
    batch_test-- the batch test on the test split
    metrics   -- reference-based scores and reference perplexity
    report    -- the batch test's Markdown report, chart and console summary
    safety    -- crisis-language detection, help resources, reply screening, measuring the layers
    guard     -- the guard model beside the lexicon (Qwen3Guard-Gen, or the base model zero-shot)
    conversation -- one turn as every front end prepares it (window, safety, context)
    serving   -- the OpenAI-compatible server and the chat page
    train_cli, infer_cli -- the two command-line programs (the scripts in LLM_fine_turning/ call them)
"""
