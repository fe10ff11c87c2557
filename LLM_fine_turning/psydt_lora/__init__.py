"""PsyDT-LoRA: fine-tune Qwen3 with LoRA on PsyDTCorpus and talk to the result.

Modules, by what they hold:
    errors    -- the one exception type users see, and the CLI edge that prints it
    cli       -- the Chinese --help both scripts share
    files     -- atomic writes, plotting backend, local path checks
    hub       -- fetching the model and the PsyDTCorpus files (modelscope / huggingface)
    dialogues -- reading and validating dialogue files, picking eval/test items
    prompt    -- the one prompt rendering shared by training and inference
    samples   -- dialogues -> token ids + labels (assistant-only loss), truncation
    models    -- loading tokenizer / base model / adapter
    training  -- LoRA + Trainer + SwanLab + outputs
    chat      -- the interactive terminal chat
    batch_test-- the batch test on the test split
    metrics   -- reference-based scores and reference perplexity
    report    -- the batch test's Markdown report, chart and console summary
    safety    -- crisis-language detection, help resources, reply screening
"""
