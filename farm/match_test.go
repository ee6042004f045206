package farm

import (
	"strings"
	"testing"
)

func TestMachineCanBuild(t *testing.T) {
	x86 := Machine{System: "x86_64-linux", ExtraPlatforms: []string{"i686-linux"}, Features: []string{"big-parallel", "kvm", "nixos-test"}}
	bench := Machine{System: "x86_64-linux", Features: []string{"kvm"}, Mandatory: []string{"benchmark"}}
	for _, tc := range []struct {
		name     string
		m        Machine
		system   string
		features []string
		want     bool
	}{
		{"own system", x86, "x86_64-linux", nil, true},
		{"extra platform", x86, "i686-linux", nil, true},
		{"other system", x86, "aarch64-linux", nil, false},
		{"builtin goes anywhere", x86, "builtin", nil, true},
		{"supported features", x86, "x86_64-linux", []string{"kvm", "nixos-test"}, true},
		{"one feature missing", x86, "x86_64-linux", []string{"kvm", "benchmark"}, false},
		{"mandatory not asked for", bench, "x86_64-linux", nil, false},
		{"mandatory not asked for, supported asked", bench, "x86_64-linux", []string{"kvm"}, false},
		{"mandatory asked for (counts as supported)", bench, "x86_64-linux", []string{"benchmark"}, true},
		{"mandatory and supported asked for", bench, "x86_64-linux", []string{"benchmark", "kvm"}, true},
		{"mandatory met, other feature missing", bench, "x86_64-linux", []string{"benchmark", "big-parallel"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := &Node{System: tc.system, Features: tc.features}
			if got := tc.m.CanBuild(n); got != tc.want {
				t.Errorf("CanBuild(%s %v) = %v, want %v", tc.system, tc.features, got, tc.want)
			}
		})
	}
	if got := x86.Systems(); len(got) != 2 || got[0] != "i686-linux" || got[1] != "x86_64-linux" {
		t.Errorf("Systems() = %v", got)
	}
}

func TestFeatureClass(t *testing.T) {
	if got := FeatureClass(nil); got != NoFeatures {
		t.Errorf("no features: %q", got)
	}
	if a, b := FeatureClass([]string{"kvm", "big-parallel"}), FeatureClass([]string{"big-parallel", "kvm", "kvm"}); a != b || a != "big-parallel+kvm" {
		t.Errorf("order and repeats must not matter: %q %q", a, b)
	}
	// Names that cannot stand in a subject, or that would read as
	// another class, get a digest.
	for _, f := range [][]string{{"has.dot"}, {"none"}, {"x-1"}, {"sp ace"}} {
		c := FeatureClass(f)
		if len(c) != len("x-")+16 || c[:2] != "x-" {
			t.Errorf("FeatureClass(%q) = %q, want a digest", f, c)
		}
	}
	if FeatureClass([]string{"has.dot"}) == FeatureClass([]string{"none"}) {
		t.Error("distinct sets share a digest")
	}
}

func TestMachineOf(t *testing.T) {
	cfg := map[string]string{"system": "x86_64-linux", "extra-platforms": "i686-linux x86_64-linux", "system-features": "kvm benchmark big-parallel kvm"}
	m := MachineOf(cfg)
	if m.System != "x86_64-linux" || len(m.ExtraPlatforms) != 1 || m.ExtraPlatforms[0] != "i686-linux" ||
		strings.Join(m.Features, " ") != "benchmark big-parallel kvm" || m.Mandatory != nil {
		t.Errorf("MachineOf(%v) = %+v", cfg, m)
	}
	if m := MachineOf(cfg, "aarch64-linux"); m.System != "aarch64-linux" || m.ExtraPlatforms != nil || len(m.Features) != 3 {
		t.Errorf("with systems: %+v", m)
	}
}
