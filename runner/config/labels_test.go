package config

import (
	"errors"
	"reflect"
	"testing"
)

func TestParseLabel(t *testing.T) {
	tests := []struct {
		in        string
		want      Label
		wantErr   error
		container bool
	}{
		{in: "nix", want: Label{Name: "nix"}},
		{in: "nix:host", want: Label{Name: "nix", Schema: "host"}},
		{in: "nix-aarch64-linux", want: Label{Name: "nix-aarch64-linux"}},
		{in: "ubuntu-latest:docker://node:20-bookworm", wantErr: ErrContainerLabel},
		{in: "ubuntu:docker", wantErr: ErrContainerLabel},
		{in: "debian:lxc://debian:bookworm", wantErr: ErrContainerLabel},
		{in: "nix:host:x", wantErr: ErrLabel},
		{in: "nix:vm", wantErr: ErrLabel},
		{in: "", wantErr: ErrLabel},
		{in: ":host", wantErr: ErrLabel},
		{in: " nix", wantErr: ErrLabel},
		{in: "a b", wantErr: ErrLabel},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseLabel(tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || !errors.Is(err, ErrLabel) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || got.String() != tt.in {
				t.Errorf("got %+v (%s), want %+v", got, got, tt.want)
			}
		})
	}
}

func TestLabelNames(t *testing.T) {
	got, err := LabelNames([]string{"nix:host", "kvm", "nix", "big-parallel:host"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"nix", "kvm", "big-parallel"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if _, err := LabelNames([]string{"nix", "x:docker://y"}); !errors.Is(err, ErrContainerLabel) {
		t.Errorf("err = %v", err)
	}
}

func TestSplitLabels(t *testing.T) {
	tests := map[string][]string{
		"":                 nil,
		"nix":              {"nix"},
		" nix , kvm:host,": {"nix", "kvm:host"},
		",,":               nil,
	}
	for in, want := range tests {
		if got := SplitLabels(in); !reflect.DeepEqual(got, want) {
			t.Errorf("SplitLabels(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDefaultLabels(t *testing.T) {
	tests := []struct {
		name string
		cfg  map[string]string
		want []string
	}{
		{name: "no nix settings", cfg: nil, want: []string{"nix"}},
		{
			name: "x86_64 host as Debian's nix reports it",
			cfg: map[string]string{
				"system":          "x86_64-linux",
				"extra-platforms": "i686-linux x86_64-v1-linux",
				"system-features": "benchmark big-parallel kvm nixos-test",
			},
			want: []string{"nix", "nix-x86_64-linux", "nix-i686-linux", "nix-x86_64-v1-linux", "kvm", "big-parallel"},
		},
		{
			name: "emulated aarch64, repeated platform, no kvm",
			cfg: map[string]string{
				"system":          "x86_64-linux",
				"extra-platforms": " aarch64-linux  x86_64-linux aarch64-linux",
				"system-features": "nixos-test",
			},
			want: []string{"nix", "nix-x86_64-linux", "nix-aarch64-linux"},
		},
		{
			name: "darwin",
			cfg:  map[string]string{"system": "aarch64-darwin", "extra-platforms": "x86_64-darwin", "system-features": "big-parallel"},
			want: []string{"nix", "nix-aarch64-darwin", "nix-x86_64-darwin", "big-parallel"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := DefaultLabels(tt.cfg)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if _, err := LabelNames(got); err != nil {
				t.Errorf("default labels do not parse: %v", err)
			}
		})
	}
}
