// Renders an Ollama Modelfile's TEMPLATE for a conversation the way Ollama's server does, with Go's own
// text/template: the Modelfile's SYSTEM is put first when the conversation has no system message,
// consecutive messages of one role are merged, and the template gets System, Messages, Tools and an
// empty Response, missing keys rendering as zero values.
//
//	go run main.go Modelfile < messages.json   (a JSON list of {"role", "content"})
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// command reads `NAME """..."""` (or a one-line value) from a Modelfile; "" when absent. Like Ollama's
// parser it keeps whitespace and drops the other runes strconv.IsPrint rejects.
func command(modelfile, name string) string {
	quoted := regexp.MustCompile(`(?ms)^` + name + ` """(.*?)"""`)
	if m := quoted.FindStringSubmatch(modelfile); m != nil {
		return strings.Map(func(r rune) rune {
			if strconv.IsPrint(r) || strings.ContainsRune(" \t\r\n", r) {
				return r
			}
			return -1
		}, m[1])
	}
	line := regexp.MustCompile(`(?m)^` + name + ` (.*)$`)
	if m := line.FindStringSubmatch(modelfile); m != nil {
		return m[1]
	}
	return ""
}

func collate(msgs []Message) (string, []*Message) {
	var system []string
	var out []*Message
	for i := range msgs {
		msg := msgs[i]
		if msg.Role == "system" {
			system = append(system, msg.Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == msg.Role {
			out[len(out)-1].Content += "\n\n" + msg.Content
		} else {
			out = append(out, &msg)
		}
	}
	return strings.Join(system, "\n\n"), out
}

func main() {
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	modelfile := string(raw)
	var msgs []Message
	if err := json.NewDecoder(os.Stdin).Decode(&msgs); err != nil {
		panic(err)
	}
	if sys := command(modelfile, "SYSTEM"); sys != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
		msgs = append([]Message{{Role: "system", Content: sys}}, msgs...)
	}
	system, collated := collate(msgs)
	tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(command(modelfile, "TEMPLATE")))
	data := map[string]any{"System": system, "Messages": collated, "Tools": nil, "Response": ""}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
