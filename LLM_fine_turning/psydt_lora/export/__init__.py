"""Taking the fine-tune elsewhere: the merged folder, GGUF files, an Ollama Modelfile, serving recipes."""
