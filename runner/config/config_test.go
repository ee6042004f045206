package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestExampleRoundTrip(t *testing.T) {
	c, err := Parse(Example())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("Example() does not load into Default():\n got %+v\nwant %+v", c, Default())
	}
}

func TestLoadForgejoRunnerFile(t *testing.T) {
	c, err := Load("testdata/forgejo-runner.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Log.Level = "debug"
	want.Runner = Runner{
		File:            "/var/lib/runner/.runner",
		Capacity:        4,
		Envs:            map[string]string{"FROM_ENVS": "envs"},
		Timeout:         time.Hour,
		ShutdownTimeout: 0, // explicit 0 means "cancel at once", as in forgejo-runner
		Insecure:        true,
		FetchTimeout:    10 * time.Second,
		FetchInterval:   30 * time.Second,
		ReportInterval:  2 * time.Second,
		ReportRetry:     Retry{MaxRetries: 3, InitialDelay: time.Second, MaxDelay: 10 * time.Second},
		Labels:          []string{"nix:host", "big"},
	}
	want.Host.WorkdirParent = "/srv/work"
	c.Cache, c.Container = want.Cache, want.Container
	if len(c.Warnings) != 2 || !strings.Contains(c.Warnings[0], `"cache"`) || !strings.Contains(c.Warnings[1], `"container"`) {
		t.Errorf("warnings = %q, want one for cache and one for container", c.Warnings)
	}
	c.Warnings = nil
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string // substring; "" means success
		check   func(t *testing.T, c *Config)
	}{
		{name: "empty document", yaml: "", check: func(t *testing.T, c *Config) {
			if !reflect.DeepEqual(c, Default()) {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "unknown runner key", yaml: "runner:\n  capacitty: 2\n", wantErr: "capacitty"},
		{name: "unknown section", yaml: "dockerish:\n  a: 1\n", wantErr: "dockerish"},
		{name: "unknown provenix key", yaml: "provenix:\n  tenat: x\n", wantErr: "tenat"},
		{name: "duration without unit", yaml: "runner:\n  timeout: 10\n", wantErr: "time.Duration"},
		{name: "bad duration", yaml: "runner:\n  fetch_interval: soon\n", wantErr: "soon"},
		{name: "negative shutdown", yaml: "runner:\n  shutdown_timeout: -1s\n", wantErr: "negative"},
		{name: "bad log level", yaml: "log:\n  level: loud\n", wantErr: "loud"},
		{name: "docker label", yaml: "runner:\n  labels: ['ubuntu:docker://node:20']\n", wantErr: "natively with Nix"},
		{name: "tenant with dot", yaml: "provenix:\n  tenant: a.b\n", wantErr: "NATS subject"},
		{name: "zero values mean defaults", yaml: "runner:\n  capacity: 0\n  timeout: 0s\n  fetch_interval: 0s\nprovenix:\n  tenant: ''\n", check: func(t *testing.T, c *Config) {
			if c.Runner.Capacity != DefaultCapacity || c.Runner.Timeout != DefaultTimeout || c.Runner.FetchInterval != DefaultFetchInterval || c.Provenix.Tenant != DefaultTenant {
				t.Errorf("got %+v", c.Runner)
			}
		}},
		{name: "provenix section", yaml: "provenix:\n  nats_url: nats://n:4222\n  tenant: acme\n  key: /k\n  builder_id: ci-1\n  job_user: runner-job\n", check: func(t *testing.T, c *Config) {
			want := Provenix{NATSURL: "nats://n:4222", Tenant: "acme", Key: "/k", BuilderID: "ci-1", JobUser: "runner-job"}
			if !reflect.DeepEqual(c.Provenix, want) {
				t.Errorf("got %+v", c.Provenix)
			}
		}},
		{name: "volunteer for the farm", yaml: "provenix:\n  volunteer: true\n  owner: alice\n  nix_options:\n    substituters: http://c\n    trusted-public-keys: c-1:k\n", check: func(t *testing.T, c *Config) {
			want := map[string]string{"substituters": "http://c", "trusted-public-keys": "c-1:k"}
			if !c.Provenix.Volunteer || c.Provenix.Owner != "alice" || !reflect.DeepEqual(c.Provenix.NixOptions, want) {
				t.Errorf("got %+v", c.Provenix)
			}
		}},
		{name: "empty cache section is no warning", yaml: "cache:\ncontainer:\n", check: func(t *testing.T, c *Config) {
			if len(c.Warnings) != 0 {
				t.Errorf("warnings %q", c.Warnings)
			}
		}},
		{name: "connections with list labels", yaml: "server:\n  connections:\n    f:\n      url: https://f.example/\n      uuid: u\n      token: t\n      labels: [nix, 'kvm:host']\n", check: func(t *testing.T, c *Config) {
			got := c.Server.Connections["f"]
			if got.URL != "https://f.example/" || !reflect.DeepEqual([]string(got.Labels), []string{"nix", "kvm:host"}) {
				t.Errorf("got %+v", got)
			}
		}},
		{name: "connections with map labels", yaml: "server:\n  connections:\n    f:\n      url: https://f.example/\n      uuid: u\n      token: t\n      labels:\n        nix: {backend: host}\n        kvm: {}\n", check: func(t *testing.T, c *Config) {
			if got := []string(c.Server.Connections["f"].Labels); !reflect.DeepEqual(got, []string{"nix:host", "kvm"}) {
				t.Errorf("labels %q", got)
			}
		}},
		{name: "connection with docker backend", yaml: "server:\n  connections:\n    f:\n      url: https://f.example/\n      uuid: u\n      token: t\n      labels:\n        ubuntu: {backend: docker, backend-options: {image: node}}\n", wantErr: "natively with Nix"},
		{name: "connection without token", yaml: "server:\n  connections:\n    f:\n      url: https://f.example/\n      uuid: u\n", wantErr: "server.connections.f: needs token or token_url"},
		{name: "connection without uuid", yaml: "server:\n  connections:\n    f:\n      url: https://f.example/\n      token: t\n", wantErr: "server.connections.f: needs url and uuid"},
		{name: "unknown connection key", yaml: "server:\n  connections:\n    f:\n      urll: x\n", wantErr: "urll"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				if !errors.Is(err, ErrConfig) {
					t.Errorf("err = %v, want ErrConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestLoadEnvFile(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, "env")
	if err := os.WriteFile(envFile, []byte("# comment\nA=from-file\nB=from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	write("runner:\n  envs:\n    A: from-envs\n  env_file: " + envFile + "\n")
	c, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"A": "from-envs", "B": "from-file"}; !reflect.DeepEqual(c.Runner.Envs, want) {
		t.Errorf("envs = %v, want %v", c.Runner.Envs, want)
	}

	write("runner:\n  env_file: " + filepath.Join(dir, "missing") + "\n")
	c, err = Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "does not exist") {
		t.Errorf("warnings = %q", c.Warnings)
	}

	if _, err := Load(filepath.Join(dir, "nope.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing config: err = %v", err)
	}
}

func TestReadEnvFile(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    map[string]string
		wantErr bool
	}{
		{name: "plain", in: "A=1\n\n# c\nB = two words \n", want: map[string]string{"A": "1", "B": "two words"}},
		{name: "export and quotes", in: "export A=\"x\\ny\"\nB='$HOME'\nC=\"\"\n", want: map[string]string{"A": "x\ny", "B": "$HOME", "C": ""}},
		{name: "equals in value", in: "A=b=c\n", want: map[string]string{"A": "b=c"}},
		{name: "no equals", in: "A\n", wantErr: true},
		{name: "bad key", in: "1A=x\n", wantErr: true},
		{name: "bad quoting", in: "A=\"\\q\"\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadEnvFile(strings.NewReader(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestWorkdirParent(t *testing.T) {
	c := Default()
	got, err := c.WorkdirParent("/data")
	if err != nil || got != "/data/runner/work" {
		t.Errorf("default = %q, %v", got, err)
	}
	c.Host.WorkdirParent = "rel"
	got, _ = c.WorkdirParent("/data")
	if !filepath.IsAbs(got) || filepath.Base(got) != "rel" {
		t.Errorf("relative = %q", got)
	}
}

func TestJobUsersPool(t *testing.T) {
	c, err := Parse([]byte("runner:\n  capacity: 3\nprovenix:\n  job_users: [\"provenix-job-{0..2}\", extra]\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"provenix-job-0", "provenix-job-1", "provenix-job-2", "extra"}
	if strings.Join(c.Provenix.JobUsers, ",") != strings.Join(want, ",") {
		t.Fatalf("job_users %v", c.Provenix.JobUsers)
	}
	for _, bad := range []string{
		"runner:\n  capacity: 3\nprovenix:\n  job_users: [\"u-{0..1}\"]\n", // capacity > pool
		"provenix:\n  job_users: [a, a]\n",
		"provenix:\n  job_users: [root]\n",
		"provenix:\n  job_users: [\"u-{3..1}\"]\n",
	} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrConfig) {
			t.Errorf("%q: %v, want ErrConfig", bad, err)
		}
	}
}
