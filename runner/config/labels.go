package config

import (
	"errors"
	"fmt"
	"strings"

	"codeberg.org/provenix/provenix/nix"
)

// ErrLabel marks a runner label this runner cannot serve.
var ErrLabel = errors.New("invalid runner label")

// ErrContainerLabel marks a label asking for a container (docker://, lxc://).
// It wraps ErrLabel.
var ErrContainerLabel = fmt.Errorf("%w: provenix runner runs jobs natively with Nix, not in containers", ErrLabel)

// SchemaHost is the only label schema this runner knows: the job runs on
// the host. A label without a schema means the same here (in
// forgejo-runner it would mean docker).
const SchemaHost = "host"

// Label is one runner label: `runs-on:` in a workflow matches its Name.
type Label struct {
	Name   string
	Schema string // "" or SchemaHost
}

// String gives the label back in the form it was written.
func (l Label) String() string {
	if l.Schema == "" {
		return l.Name
	}
	return l.Name + ":" + l.Schema
}

// ParseLabel parses "name" or "name:host". The docker and lxc schemas of
// forgejo-runner ("ubuntu:docker://node:20") are refused with
// ErrContainerLabel rather than silently run on the host, since a job
// expecting a container image would find neither its tools nor its
// isolation here.
func ParseLabel(s string) (Label, error) {
	name, schema, _ := strings.Cut(s, ":")
	switch {
	case name == "":
		return Label{}, fmt.Errorf("%w %q: empty name", ErrLabel, s)
	case strings.TrimSpace(name) != name || strings.ContainsAny(name, " \t\r\n,"):
		return Label{}, fmt.Errorf("%w %q: a name must not contain spaces or commas", ErrLabel, s)
	}
	switch {
	case schema == "" || schema == SchemaHost:
		return Label{Name: name, Schema: schema}, nil
	case strings.HasPrefix(schema, "docker") || strings.HasPrefix(schema, "lxc"):
		return Label{}, fmt.Errorf("label %q: %w; use %q (or %q) and let the job use Nix for its tools", s, ErrContainerLabel, name, name+":"+SchemaHost)
	case strings.HasPrefix(schema, SchemaHost+":"):
		return Label{}, fmt.Errorf("%w %q: the host schema takes no argument", ErrLabel, s)
	default:
		return Label{}, fmt.Errorf("%w %q: unknown schema %q (only %q is supported)", ErrLabel, s, schema, SchemaHost)
	}
}

// ParseLabels parses every label and drops repeated names, keeping the
// first; the order is kept.
func ParseLabels(ss []string) ([]Label, error) {
	out := make([]Label, 0, len(ss))
	seen := make(map[string]bool, len(ss))
	for _, s := range ss {
		l, err := ParseLabel(s)
		if err != nil {
			return nil, err
		}
		if seen[l.Name] {
			continue
		}
		seen[l.Name] = true
		out = append(out, l)
	}
	return out, nil
}

// LabelNames parses labels and returns their names, the only part the
// forge is told about.
func LabelNames(ss []string) ([]string, error) {
	ls, err := ParseLabels(ss)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(ls))
	for i, l := range ls {
		names[i] = l.Name
	}
	return names, nil
}

// SplitLabels splits a comma-separated list as given on a command line,
// trimming spaces around each item and dropping empty ones, so that
// "nix, kvm" does not become a label named " kvm".
func SplitLabels(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// DefaultLabels derives labels from the host's Nix settings (the values of
// `nix show-config`): "nix"; "nix-<system>" for the native system and for
// each of extra-platforms, so that `runs-on: nix-aarch64-linux` reaches a
// machine that can build for it; and "kvm" and "big-parallel" when they are
// among system-features, matching the requiredSystemFeatures Nix uses.
// The result has no duplicates and a stable order.
func DefaultLabels(nixConfig map[string]string) []string {
	out := []string{"nix"}
	seen := map[string]bool{"nix": true}
	add := func(l string) {
		if !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	for _, sys := range nix.Systems(nixConfig) {
		add("nix-" + sys)
	}
	features := make(map[string]bool)
	for _, f := range strings.Fields(nixConfig["system-features"]) {
		features[f] = true
	}
	for _, f := range []string{"kvm", "big-parallel"} {
		if features[f] {
			add(f)
		}
	}
	return out
}
