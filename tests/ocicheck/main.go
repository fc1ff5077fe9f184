// Command ocicheck is an independent consumer of winspec's output: it decodes each config.json
// named on the command line strictly into the OCI reference types (specs.Spec from
// github.com/opencontainers/runtime-spec/specs-go, unknown fields refused), encodes the result
// again and compares it with the input byte for byte.
//
// It prints one JSON object per file ({"path", "ok", "error"}) and exits 1 when any file fails.
// The tests build it offline against Debian's golang-github-opencontainers-specs-dev
// (GOPATH=/usr/share/gocode, GO111MODULE=off, GOPROXY=off).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

type result struct {
	Path  string `json:"path"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

func check(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var spec specs.Spec
	if err := dec.Decode(&spec); err != nil {
		return fmt.Errorf("strict decode into specs.Spec: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("data after the spec object")
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	// winspec writes "<", ">" and "&" as they are; Go's HTML escaping would change the bytes.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&spec); err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	again := bytes.TrimRight(out.Bytes(), "\n")
	original := bytes.TrimRight(data, "\n")
	if !bytes.Equal(again, original) {
		return fmt.Errorf("re-encoding differs:\n  input:  %s\n  output: %s", original, again)
	}
	return nil
}

func main() {
	failed := false
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	for _, path := range os.Args[1:] {
		r := result{Path: path, OK: true}
		data, err := os.ReadFile(path)
		if err == nil {
			err = check(data)
		}
		if err != nil {
			r.OK = false
			r.Error = err.Error()
			failed = true
		}
		if err := enc.Encode(r); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	if failed {
		os.Exit(1)
	}
}
