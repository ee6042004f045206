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

// A forgejo-runner config with server.connections loads unchanged: every
// connection field as written, and the daemon's view with the defaults
// applied and the credential read.
func TestLoadForgejoRunnerConnections(t *testing.T) {
	creds, err := filepath.Abs("testdata/credentials")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	c, err := Load("testdata/forgejo-runner-connections.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Connection{
		"codeberg": {URL: "https://codeberg.org/", UUID: "2ad6ba46-2ae3-4b0b-a3b2-0ce4dd9c6b8f",
			TokenURL: "file:$CREDENTIALS_DIRECTORY/codeberg", FetchInterval: 10 * time.Second},
		"forgejo-example": {URL: "https://forgejo.example.org/", UUID: "7f0c9c0e-6c7e-4a36-9a8a-3f3b1a9f2b11",
			Token: "0123456789abcdef0123456789abcdef01234567", Labels: ConnectionLabels{"nix:host", "kvm"}},
	}
	if !reflect.DeepEqual(c.Server.Connections, want) {
		t.Errorf("connections\n got %+v\nwant %+v", c.Server.Connections, want)
	}
	if c.Runner.Capacity != 2 || !reflect.DeepEqual(c.Runner.Labels, []string{"nix:host"}) {
		t.Errorf("runner %+v", c.Runner)
	}

	got, err := c.Connections(&Registration{Name: "ignored", URL: "https://ignored/", UUID: "u", Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	wantResolved := []ResolvedConnection{
		{Name: "codeberg", URL: "https://codeberg.org/", UUID: "2ad6ba46-2ae3-4b0b-a3b2-0ce4dd9c6b8f",
			Token: "token-of-codeberg", Labels: []string{"nix:host"}, FetchInterval: 10 * time.Second},
		{Name: "forgejo-example", URL: "https://forgejo.example.org/", UUID: "7f0c9c0e-6c7e-4a36-9a8a-3f3b1a9f2b11",
			Token: "0123456789abcdef0123456789abcdef01234567", Labels: []string{"nix:host", "kvm"}, FetchInterval: 2 * time.Second},
	}
	if !reflect.DeepEqual(got, wantResolved) {
		t.Errorf("Connections()\n got %+v\nwant %+v", got, wantResolved)
	}
}

// A plain .runner registration is one connection of the same shape.
func TestConnectionsFromRunnerFile(t *testing.T) {
	reg := &Registration{Name: "ci-1", URL: "https://f.example/", UUID: "u", Token: "t", Labels: []string{"nix"}}
	c := Default()
	got, err := c.Connections(reg)
	if err != nil {
		t.Fatal(err)
	}
	want := []ResolvedConnection{{Name: "ci-1", URL: "https://f.example/", UUID: "u", Token: "t", Labels: []string{"nix"}, FetchInterval: DefaultFetchInterval}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	// runner.labels win over the registered ones, as in JobLabels.
	c.Runner.Labels = []string{"big"}
	if got, _ := c.Connections(reg); len(got) != 1 || !reflect.DeepEqual(got[0].Labels, []string{"big"}) {
		t.Errorf("with runner.labels: %+v", got)
	}
	if _, err := Default().Connections(nil); !errors.Is(err, ErrNoConnection) {
		t.Errorf("no registration: %v, want ErrNoConnection", err)
	}
}

func TestConnectionsErrors(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "tok")
	if err := os.WriteFile(tokenFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(dir, "empty")
	if err := os.WriteFile(emptyFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	conn := func(extra string) string {
		return "runner:\n  labels: [nix]\nserver:\n  connections:\n    f:\n      url: https://f.example/\n      uuid: u\n" + extra
	}
	tests := []struct {
		name     string
		yaml     string
		env      string // CREDENTIALS_DIRECTORY
		parseErr string // from Parse
		connErr  string // from Connections, when Parse succeeded
		token    string
	}{
		{name: "both token and token_url", yaml: conn("      token: t\n      token_url: file:" + tokenFile + "\n"), parseErr: "server.connections.f: has both token and token_url"},
		{name: "neither", yaml: conn(""), parseErr: "server.connections.f: needs token or token_url"},
		{name: "http token_url", yaml: conn("      token_url: https://vault.example/token\n"), parseErr: "only file: URLs are accepted"},
		{name: "relative path", yaml: conn("      token_url: file:tok\n"), parseErr: "must be absolute"},
		{name: "remote host", yaml: conn("      token_url: file://other.example/tok\n"), parseErr: `not one on host "other.example"`},
		{name: "other variable", yaml: conn("      token_url: file:$HOME/tok\n"), parseErr: "not $HOME"},
		{name: "negative fetch_interval", yaml: conn("      token: t\n      fetch_interval: -1s\n"), parseErr: "fetch_interval -1s is negative"},
		{name: "missing file", yaml: conn("      token_url: file:" + filepath.Join(dir, "nope") + "\n"), connErr: "server.connections.f: token_url: open"},
		{name: "empty file", yaml: conn("      token_url: file:" + emptyFile + "\n"), connErr: "is empty"},
		{name: "credentials dir unset", yaml: conn("      token_url: file:$CREDENTIALS_DIRECTORY/tok\n"), connErr: "$CREDENTIALS_DIRECTORY is not set"},
		{name: "no labels anywhere", yaml: "server:\n  connections:\n    f:\n      url: https://f.example/\n      uuid: u\n      token: t\n", connErr: "server.connections.f: no labels"},
		{name: "absolute file", yaml: conn("      token_url: file:" + tokenFile + "\n"), token: "secret"},
		{name: "file URL with empty host", yaml: conn("      token_url: file://" + tokenFile + "\n"), token: "secret"},
		{name: "braced credentials dir", yaml: conn("      token_url: file:${CREDENTIALS_DIRECTORY}/tok\n"), env: dir, token: "secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("CREDENTIALS_DIRECTORY", tt.env)
			c, err := Parse([]byte(tt.yaml))
			if tt.parseErr != "" {
				if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.parseErr) {
					t.Fatalf("Parse error %v, want ErrConfig with %q", err, tt.parseErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.Connections(nil)
			if tt.connErr != "" {
				if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.connErr) {
					t.Fatalf("Connections error %v, want ErrConfig with %q", err, tt.connErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].Token != tt.token {
				t.Errorf("got %+v, want token %q", got, tt.token)
			}
		})
	}
}
