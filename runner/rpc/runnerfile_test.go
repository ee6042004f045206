package rpc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"connectrpc.com/connect"

	"codeberg.org/provenix/provenix/runner/rpc/rpctest"
)

func TestRunnerFileGolden(t *testing.T) {
	f := &RunnerFile{
		ID:      42,
		UUID:    "8a4c2d6e-1f3b-4c5d-9e7f-0a1b2c3d4e5f",
		Name:    "builder-1",
		Token:   "0123456789abcdef0123456789abcdef01234567",
		Address: "https://forgejo.example.org",
		Labels:  []string{"nix", "nix-x86_64-linux", "kvm:host"},
	}
	got, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/runner.golden.json")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("Marshal() =\n%s\nwant (testdata/runner.golden.json)\n%s", got, want)
	}
}

func TestRunnerFileSaveLoad(t *testing.T) {
	// A permissive umask must not make the token readable by others.
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })

	dir := t.TempDir()
	path := filepath.Join(dir, ".runner")
	f := &RunnerFile{ID: 1, UUID: "u", Name: "n", Token: "secret", Address: "http://f", Labels: []string{"nix"}}
	for range 2 { // the second Save replaces the first
		if err := f.Save(path); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %04o, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only .runner (no temporary files)", len(entries))
	}
	got, err := LoadRunnerFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := *f
	want.Warning = RunnerFileWarning
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("loaded %+v, want %+v", *got, want)
	}
}

func TestLoadRunnerFile(t *testing.T) {
	tests := []struct {
		name     string
		content  string // "" means the forgejo-runner fixture
		mode     os.FileMode
		wantErr  error
		wantWarn string
	}{
		{name: "written by forgejo-runner, 0644", mode: 0o644, wantWarn: "chmod 600"},
		{name: "written by forgejo-runner, 0600", mode: 0o600},
		{name: "not JSON", content: "uuid=x", mode: 0o600, wantErr: ErrRunnerFile},
		{name: "no token", content: `{"uuid":"u","address":"http://f"}`, mode: 0o600, wantErr: ErrRunnerFile},
	}
	fixture, err := os.ReadFile("testdata/forgejo-runner.runner")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), ".runner")
			content := []byte(tt.content)
			if tt.content == "" {
				content = fixture
			}
			if err := os.WriteFile(path, content, tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			f, err := LoadRunnerFile(path)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.ID != 7 || f.UUID != "37633331-3539-3165-3862-363732323561" || f.Address != "https://codeberg.example/" || len(f.Labels) != 2 {
				t.Errorf("loaded %+v", f)
			}
			switch {
			case tt.wantWarn == "" && len(f.Warnings) > 0:
				t.Errorf("warnings %q, want none", f.Warnings)
			case tt.wantWarn != "" && (len(f.Warnings) != 1 || !strings.Contains(f.Warnings[0], tt.wantWarn)):
				t.Errorf("warnings %q, want one containing %q", f.Warnings, tt.wantWarn)
			}
		})
	}
	if _, err := LoadRunnerFile(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v, want ErrNotExist", err)
	}
}

func TestCreateRunnerFile(t *testing.T) {
	tests := []struct {
		secret   string
		wantUUID string
		wantErr  error
	}{
		// Forgejo's own test vector: the characters "AAAA..." are bytes 0x41.
		{secret: strings.Repeat("A", 40), wantUUID: "41414141-4141-4141-4141-414141414141"},
		{secret: "7c31591e8b67225a116d4a4519ea8e507e08f71f", wantUUID: "37633331-3539-3165-3862-363732323561"},
		{secret: "7c31591e8b67225a116d4a4519ea8e507e08f71", wantErr: ErrSecret},
		{secret: "7c31591e8b67225a116d4a4519ea8e507e08f71f0", wantErr: ErrSecret},
		{secret: "zc31591e8b67225a116d4a4519ea8e507e08f71f", wantErr: ErrSecret},
		{secret: "", wantErr: ErrSecret},
	}
	for _, tt := range tests {
		t.Run(tt.secret, func(t *testing.T) {
			f, err := CreateRunnerFile("https://forgejo.example.org", tt.secret, "r", []string{"nix"})
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.UUID != tt.wantUUID || f.Token != tt.secret || f.Address != "https://forgejo.example.org" || f.Name != "r" {
				t.Errorf("got %+v", f)
			}
		})
	}
	if _, err := CreateRunnerFile("forgejo.example.org", strings.Repeat("a", 40), "r", nil); err == nil {
		t.Error("an instance without scheme was accepted")
	}
}

// A runner file made from a secret authenticates against a forge that
// registered the same secret the way forgejo-cli does.
func TestCreateRunnerFileAuthenticates(t *testing.T) {
	srv := rpctest.New(t)
	secret := "7c31591e8b67225a116d4a4519ea8e507e08f71f"
	if _, err := srv.RegisterSecret("offline", secret); err != nil {
		t.Fatal(err)
	}
	f, err := CreateRunnerFile(srv.URL, secret, "offline", []string{"nix"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(f.Address, WithCredentials(f.UUID, f.Token))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Declare(ctx, &runnerv1.DeclareRequest{Version: "test", Labels: []string{"nix"}}); err != nil {
		t.Fatalf("Declare with the secret's credentials: %v", err)
	}
}

// TestCheckRegistration: a registration the forge knows is declared; one
// it does not know is ErrUnknownSecret; a forge too old to declare is
// checked by Ping alone; a forge that does not answer says so.
func TestCheckRegistration(t *testing.T) {
	srv := rpctest.New(t)
	secret := "7c31591e8b67225a116d4a4519ea8e507e08f71f"
	f, err := CreateRunnerFile(srv.URL, secret, "offline", []string{"nix:host", "kvm"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fast := WithRetry(Retry{Attempts: 1})
	if _, err := CheckRegistration(ctx, f, "test", fast); !errors.Is(err, ErrUnknownSecret) || !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("an unknown secret: %v", err)
	}
	if _, err := srv.RegisterSecret("offline", secret); err != nil {
		t.Fatal(err)
	}
	r, err := CheckRegistration(ctx, f, "test", fast)
	if err != nil || r == nil || r.GetName() != "offline" || !reflect.DeepEqual(r.GetLabels(), []string{"nix", "kvm"}) {
		t.Fatalf("a known secret: %v, %v", r, err)
	}
	srv.FailNext(rpctest.Declare, connect.CodeUnimplemented, 1)
	if r, err := CheckRegistration(ctx, f, "test", fast); err != nil || r != nil {
		t.Fatalf("a forge without Declare: %v, %v; want nil, nil", r, err)
	}
	gone := *f
	gone.Address = "http://127.0.0.1:1"
	if _, err := CheckRegistration(ctx, &gone, "test", fast); err == nil || !strings.Contains(err.Error(), "http://127.0.0.1:1 does not answer") {
		t.Fatalf("no forge: %v", err)
	}
}

func TestSameRegistration(t *testing.T) {
	a := &RunnerFile{UUID: "u", Token: "t", Address: "https://forge.example", Name: "a", Labels: []string{"nix"}}
	b := *a
	b.Name, b.Labels, b.ID = "b", []string{"kvm"}, 7
	if !a.SameRegistration(&b) {
		t.Error("another name and labels: not the same registration")
	}
	for _, change := range []func(*RunnerFile){
		func(f *RunnerFile) { f.UUID = "other" },
		func(f *RunnerFile) { f.Token = "other" },
		func(f *RunnerFile) { f.Address = "https://other.example" },
	} {
		c := *a
		change(&c)
		if a.SameRegistration(&c) {
			t.Errorf("%+v is the same registration as %+v", c, a)
		}
	}
}
