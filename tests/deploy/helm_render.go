// Renders a Helm chart's templates with Go's text/template, the engine Helm itself is built on,
// so that the chart test checks what Helm would make even where Helm is not installed (Debian
// has no helm package; it has Go).
//
//	go run helm_render.go CHART_DIR < context.json
//
// The context (Values merged with the test's overrides, Release, Chart) comes as JSON on
// stdin: Helm too turns values into JSON types (numbers become float64) before rendering.
// Templates are executed in file-name order with missingkey=error, and the documents are
// joined with "---" lines. Of Sprig's functions only `quote` is provided, as Sprig defines it:
// each non-nil argument as %q of its string form, joined by spaces. A template that calls
// anything else fails to parse, so the chart stays within what this renderer and the
// test's own subset interpreter both implement.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"
)

func quote(values ...interface{}) string {
	parts := make([]string, 0, len(values))
	for _, value := range values {
		if value == nil {
			continue
		}
		text, isString := value.(string)
		if !isString {
			text = fmt.Sprintf("%v", value)
		}
		parts = append(parts, fmt.Sprintf("%q", text))
	}
	return strings.Join(parts, " ")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "helm_render:", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 2 {
		fail(fmt.Errorf("usage: helm_render CHART_DIR < context.json"))
	}
	var context map[string]interface{}
	if err := json.NewDecoder(os.Stdin).Decode(&context); err != nil {
		fail(err)
	}
	paths, err := filepath.Glob(filepath.Join(os.Args[1], "templates", "*.yaml"))
	if err != nil {
		fail(err)
	}
	sort.Strings(paths)
	documents := make([]string, 0, len(paths))
	for _, path := range paths {
		text, err := os.ReadFile(path)
		if err != nil {
			fail(err)
		}
		parsed, err := template.New(filepath.Base(path)).Option("missingkey=error").
			Funcs(template.FuncMap{"quote": quote}).Parse(string(text))
		if err != nil {
			fail(err)
		}
		var out strings.Builder
		if err := parsed.Execute(&out, context); err != nil {
			fail(err)
		}
		documents = append(documents, out.String())
	}
	fmt.Print(strings.Join(documents, "\n---\n"))
}
