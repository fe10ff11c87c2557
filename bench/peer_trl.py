"""TRL's side of bench/peers.py, run by the TRL virtual environment's python (not this project's).

TRL's exact route: one prompt-completion example per assistant reply (the conversation up to that reply
as the prompt, rendered by the chat template with enable_thinking=False -- this project's inference
prompt -- and the reply as the completion), loss on the completion only, packed (TRL's default
best-fit-decreasing packing). Prints the Trainer's metrics, which include train_runtime.
"""
import argparse
import json


def examples(path: str):
    for record in json.loads(open(path, encoding="utf-8").read()):
        msgs = record["messages"]
        for i, m in enumerate(msgs):
            if m["role"] == "assistant" and i > 0:
                yield {"prompt": msgs[:i], "completion": [m], "chat_template_kwargs": {"enable_thinking": False}}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config", required=True, help="JSON of bench/peers.py's COMMON settings")
    p.add_argument("--target_modules", required=True)
    args = p.parse_args()
    c = json.loads(args.config)

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    data = Dataset.from_list(list(examples(args.data)))
    config = SFTConfig(output_dir=args.out, per_device_train_batch_size=c["batch"],
                       gradient_accumulation_steps=c["accumulation"], num_train_epochs=1, learning_rate=c["lr"],
                       max_length=c["max_length"], packing=True, completion_only_loss=True, save_strategy="no",
                       report_to="none", logging_steps=1000, seed=c["seed"], use_cpu=True, gradient_checkpointing=False,
                       include_num_input_tokens_seen="non_padding", dataloader_num_workers=0)
    lora = LoraConfig(r=c["lora_r"], lora_alpha=c["lora_alpha"], lora_dropout=c["lora_dropout"], task_type="CAUSAL_LM",
                      target_modules=args.target_modules.split(","))
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=lora)
    result = trainer.train()
    print(json.dumps({"train_runtime": result.metrics["train_runtime"],
                      "num_input_tokens_seen": trainer.state.num_input_tokens_seen}))


if __name__ == "__main__":
    main()
