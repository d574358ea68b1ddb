import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


# Ollama executes a Modelfile's TEMPLATE with Go's text/template: this program runs a template
# over conversations, for the tests that compare it with the model's chat template
GO_RENDERER = r"""package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	var in struct {
		Template string `json:"template"`
		Cases    []struct {
			Messages []Message `json:"messages"`
		} `json:"cases"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("modelfile").Parse(in.Template))
	outs := []string{}
	for _, c := range in.Cases {
		var b strings.Builder
		if err := t.Execute(&b, c); err != nil {
			panic(err)
		}
		outs = append(outs, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(outs)
}
"""


@pytest.fixture(scope="session")
def go_renderer(tmp_path_factory) -> Path:
    """Go's text/template, which Ollama executes TEMPLATE with, as a small program."""
    go = shutil.which("go") or ("/usr/lib/go/bin/go" if Path("/usr/lib/go/bin/go").exists() else None)
    if go is None:
        from ggml_ref import require

        require("Go toolchain (apt-get install golang-go)")
    d = tmp_path_factory.mktemp("go")
    (d / "main.go").write_text(GO_RENDERER)
    env = {
        **os.environ,
        "GOCACHE": str(d / "cache"),
        "GOPATH": str(d / "gopath"),
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "HOME": str(d),
    }
    subprocess.run([go, "build", "-o", str(d / "render"), str(d / "main.go")], check=True, env=env, cwd=d)
    return d / "render"
