package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestSetConnection(t *testing.T) {
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	orig := `# The operator's own comment, kept.
log:
  level: debug # inline, kept
runner:
  capacity: 3
  labels: [nix]
server:
  connections:
    first:
      url: https://first.example/
      uuid: u1
      token: t1
provenix:
  tenant: acme
`
	if err := os.WriteFile(path, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	second := Connection{URL: "https://second.example/", UUID: "u2", Token: "0123", Labels: ConnectionLabels{"nix", "kvm:host"}, FetchInterval: 10 * time.Second}
	if err := SetConnection(path, "second", second, false); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, keep := range []string{"# The operator's own comment, kept.", "level: debug # inline, kept", "capacity: 3", "tenant: acme"} {
		if !strings.Contains(string(data), keep) {
			t.Errorf("edited file lost %q:\n%s", keep, data)
		}
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %04o, want 0600", fi.Mode().Perm())
	}
	c, err := Load(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	want := map[string]Connection{
		"first":  {URL: "https://first.example/", UUID: "u1", Token: "t1"},
		"second": second,
	}
	if !reflect.DeepEqual(c.Server.Connections, want) || c.Runner.Capacity != 3 || c.Provenix.Tenant != "acme" || c.Log.Level != "debug" {
		t.Errorf("reloaded %+v\n%s", c, data)
	}

	// An existing name is kept unless replace.
	third := Connection{URL: "https://third.example/", UUID: "u3", TokenURL: "file:$CREDENTIALS_DIRECTORY/first"}
	if err := SetConnection(path, "first", third, false); !errors.Is(err, ErrConnectionExists) {
		t.Fatalf("replace without replace: %v", err)
	}
	if err := SetConnection(path, "first", third, true); err != nil {
		t.Fatal(err)
	}
	c, err = Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Server.Connections["first"]; !reflect.DeepEqual(got, third) || len(c.Server.Connections) != 2 {
		t.Errorf("after replace: %+v", c.Server.Connections)
	}
}

func TestSetConnectionNewSections(t *testing.T) {
	for _, orig := range []string{"", "runner:\n  capacity: 2\n", "server:\n", "server:\n  connections:\n"} {
		path := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(path, []byte(orig), 0o600); err != nil {
			t.Fatal(err)
		}
		conn := Connection{URL: "https://f/", UUID: "u", Token: "t", Labels: ConnectionLabels{"nix"}}
		if err := SetConnection(path, "f", conn, false); err != nil {
			t.Fatalf("%q: %v", orig, err)
		}
		c, err := Load(path)
		if err != nil {
			t.Fatalf("%q: %v", orig, err)
		}
		if !reflect.DeepEqual(c.Server.Connections, map[string]Connection{"f": conn}) {
			t.Errorf("%q: %+v", orig, c.Server.Connections)
		}
	}
}

func TestSetConnectionRefuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	orig := "server: [1]\n"
	if err := os.WriteFile(path, []byte(orig), 0o600); err != nil {
		t.Fatal(err)
	}
	good := Connection{URL: "https://f/", UUID: "u", Token: "t"}
	if err := SetConnection(path, "f", good, false); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "server") {
		t.Errorf("server not a mapping: %v", err)
	}
	if err := SetConnection(path, "f", Connection{URL: "https://f/", UUID: "u"}, false); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "needs token") {
		t.Errorf("no token: %v", err)
	}
	if data, _ := os.ReadFile(path); string(data) != orig {
		t.Errorf("file changed to %q", data)
	}
	if err := SetConnection(filepath.Join(t.TempDir(), "missing.yaml"), "f", good, false); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
