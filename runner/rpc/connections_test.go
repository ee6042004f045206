package rpc

import (
	"errors"
	"path/filepath"
	"reflect"
	"testing"

	"codeberg.org/provenix/provenix/runner/config"
)

// A .runner file and server.connections reach the daemon in one shape.
func TestConnections(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Runner.File = filepath.Join(dir, ".runner")
	if _, err := Connections(cfg); !errors.Is(err, config.ErrNoConnection) {
		t.Fatalf("no .runner: %v, want ErrNoConnection", err)
	}
	rf := &RunnerFile{ID: 3, UUID: "u", Name: "ci-1", Token: "secret", Address: "https://f.example/", Labels: []string{"nix"}}
	if err := rf.Save(cfg.Runner.File); err != nil {
		t.Fatal(err)
	}
	got, err := Connections(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := []config.ResolvedConnection{{Name: "ci-1", URL: "https://f.example/", UUID: "u", Token: "secret",
		Labels: []string{"nix"}, FetchInterval: config.DefaultFetchInterval}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("from .runner\n got %+v\nwant %+v", got, want)
	}

	// server.connections win: the .runner file is not part of them.
	cfg, err = config.Parse([]byte("runner:\n  file: " + cfg.Runner.File + "\n  labels: [nix]\nserver:\n  connections:\n    b:\n      url: https://b/\n      uuid: ub\n      token: tb\n    a:\n      url: https://a/\n      uuid: ua\n      token: ta\n"))
	if err != nil {
		t.Fatal(err)
	}
	got, err = Connections(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "a" || got[1].Name != "b" || got[0].Token != "ta" {
		t.Errorf("from server.connections: %+v", got)
	}
}
