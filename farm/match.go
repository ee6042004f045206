package farm

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"

	"codeberg.org/provenix/provenix/queue"
)

// Machine is what a worker can build, in the terms of Nix's machines
// file and nix.conf: its system, the other systems it can run
// (extra-platforms), the features it supports (system-features) and the
// features a derivation must ask for to be built on it (a machine's
// mandatory features: a "benchmark" box takes only benchmarks).
type Machine struct {
	System         string   `json:"system"`
	ExtraPlatforms []string `json:"extraPlatforms,omitempty"`
	Features       []string `json:"features,omitempty"`
	Mandatory      []string `json:"mandatory,omitempty"`
}

// BuiltinSystem is the system of derivations Nix builds itself
// (builtin:fetchurl): any machine can take them.
const BuiltinSystem = "builtin"

// Systems returns the systems m builds for: its own and its extra
// platforms.
func (m Machine) Systems() []string {
	return slices.Compact(slices.Sorted(slices.Values(append([]string{m.System}, m.ExtraPlatforms...))))
}

// CanBuildSystem reports whether m builds for system.
func (m Machine) CanBuildSystem(system string) bool {
	return system == BuiltinSystem || system == m.System || slices.Contains(m.ExtraPlatforms, system)
}

// CanBuildFeatures reports whether m takes a derivation requiring
// required, as Nix's Machine::allSupported and mandatoryMet decide: every
// required feature is supported (a mandatory feature counts as
// supported), and every mandatory feature is required.
func (m Machine) CanBuildFeatures(required []string) bool {
	for _, f := range required {
		if !slices.Contains(m.Features, f) && !slices.Contains(m.Mandatory, f) {
			return false
		}
	}
	for _, f := range m.Mandatory {
		if !slices.Contains(required, f) {
			return false
		}
	}
	return true
}

// CanBuild reports whether m takes n: its system and its features.
func (m Machine) CanBuild(n *Node) bool {
	return m.CanBuildSystem(n.System) && m.CanBuildFeatures(n.Features)
}

// NoFeatures is the class of derivations that require no feature.
const NoFeatures = "none"

// FeatureClass names a set of required features as one subject token:
// requests for one system go to one subject per class, so that a worker
// consumes only the classes it can build (a work queue gives each
// subject one consumer, shared by every worker that serves it). Sets
// that read well stay readable ("big-parallel+kvm"); others get a digest.
func FeatureClass(required []string) string {
	f := normFeatures(required)
	if len(f) == 0 {
		return NoFeatures
	}
	s := strings.Join(f, "+")
	if len(s) <= 64 && queue.ValidToken(s) == nil && s != NoFeatures && !strings.HasPrefix(s, "x-") &&
		!strings.ContainsAny(s, `/\`) {
		return s
	}
	sum := sha256.Sum256([]byte(strings.Join(f, "\x00")))
	return "x-" + hex.EncodeToString(sum[:8])
}

// MachineOf is the machine a Nix configuration describes (nix config
// show): its system, extra-platforms and system-features. systems, when
// given, replace the first two (the first is the machine's system). Nix
// has no mandatory features for the local machine; a machines file
// does, and callers reading one set Mandatory.
func MachineOf(cfg map[string]string, systems ...string) Machine {
	m := Machine{System: strings.TrimSpace(cfg["system"]), ExtraPlatforms: strings.Fields(cfg["extra-platforms"]),
		Features: normFeatures(strings.Fields(cfg["system-features"]))}
	if len(systems) > 0 {
		m.System, m.ExtraPlatforms = systems[0], slices.Clone(systems[1:])
	}
	m.ExtraPlatforms = slices.DeleteFunc(m.ExtraPlatforms, func(s string) bool { return s == m.System })
	if len(m.ExtraPlatforms) == 0 {
		m.ExtraPlatforms = nil
	}
	return m
}
