package config

import (
	"errors"
	"reflect"
	"testing"
)

func TestRegistrationLabels(t *testing.T) {
	hostNix := func() (map[string]string, error) {
		return map[string]string{"system": "x86_64-linux", "system-features": "kvm nixos-test"}, nil
	}
	noNix := func() (map[string]string, error) { return nil, errors.New("nix not installed") }
	withLabels := Default()
	withLabels.Runner.Labels = []string{"nix", "big:host"}
	for _, tc := range []struct {
		name    string
		cfg     *Config
		flag    string
		hostNix func() (map[string]string, error)
		want    []string
		src     LabelSource
		wantErr string
		is      error
	}{
		{name: "the config wins over the flag", cfg: withLabels, flag: "other", hostNix: noNix, want: []string{"nix", "big:host"}, src: LabelsFromConfig},
		{name: "the flag, trimmed", cfg: Default(), flag: "nix, kvm ,", hostNix: noNix, want: []string{"nix", "kvm"}, src: LabelsFromFlag},
		{name: "derived from Nix", cfg: Default(), hostNix: hostNix, want: []string{"nix", "nix-x86_64-linux", "kvm"}, src: LabelsFromNix},
		{name: "no Nix to derive from", cfg: Default(), hostNix: noNix, wantErr: "cannot derive labels from the host's Nix (nix not installed); pass --labels, e.g. --labels nix"},
		{name: "only commas", cfg: Default(), flag: " , ", hostNix: hostNix, is: ErrNoLabels},
		{name: "a container label", cfg: Default(), flag: "ubuntu:docker://node:20", hostNix: noNix, is: ErrContainerLabel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, src, err := tc.cfg.RegistrationLabels(tc.flag, tc.hostNix)
			switch {
			case tc.is != nil:
				if !errors.Is(err, tc.is) {
					t.Fatalf("err %v, want %v", err, tc.is)
				}
			case tc.wantErr != "":
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
			default:
				if err != nil || src != tc.src || !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("got %v from %v, %v; want %v from %v", got, src, err, tc.want, tc.src)
				}
			}
		})
	}
	if err := CheckRegistrationLabels(nil); !errors.Is(err, ErrNoLabels) {
		t.Errorf("no labels: %v", err)
	}
}

func TestJobLabelsAndBuilderID(t *testing.T) {
	c := Default()
	if got, err := c.JobLabels([]string{"nix:host", "kvm"}); err != nil || !reflect.DeepEqual(got, []string{"nix", "kvm"}) {
		t.Errorf("registered labels: %v %v", got, err)
	}
	if got := c.BuilderID("ci-1"); got != "forgejo-runner:ci-1" {
		t.Errorf("default builder id %q", got)
	}
	c.Runner.Labels = []string{"big"}
	c.Provenix.BuilderID = "site-a"
	if got, err := c.JobLabels([]string{"nix"}); err != nil || !reflect.DeepEqual(got, []string{"big"}) {
		t.Errorf("config labels: %v %v", got, err)
	}
	if got := c.BuilderID("ci-1"); got != "site-a" {
		t.Errorf("configured builder id %q", got)
	}
	c.Runner.Labels = []string{"x:docker://alpine"}
	if _, err := c.JobLabels(nil); !errors.Is(err, ErrContainerLabel) {
		t.Errorf("a container label: %v", err)
	}
}
