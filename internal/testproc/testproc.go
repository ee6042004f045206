// Package testproc runs the real servers integration tests talk to (Gitea,
// rekor-tiles, Fulcio, a timestamp authority, versitygw): binaries built
// once by scripts/<tool>.sh into a cache directory, each started in its own
// process group, awaited until ready, stopped in t.Cleanup and, when the
// test failed, followed by the tail of their output.
package testproc

import (
	"fmt"
	"go/build"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ToolsDir is where scripts/*.sh cache test tools: $PROVENIX_TOOLS_DIR or
// /var/cache/provenix-tools.
func ToolsDir() string {
	if d := os.Getenv("PROVENIX_TOOLS_DIR"); d != "" {
		return d
	}
	return "/var/cache/provenix-tools"
}

// Binary is the path of a cached tool: $envVar when set, else
// ToolsDir()/subdir/file.
func Binary(envVar, subdir, file string) string {
	if p := os.Getenv(envVar); p != "" {
		return p
	}
	return filepath.Join(ToolsDir(), subdir, file)
}

// Require fails the test — it never skips — when bin is missing, naming
// the command that builds it and the variable that can point elsewhere.
func Require(t testing.TB, prefix, bin, buildCommand, envVar string) {
	t.Helper()
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s: binary missing (%v); build it with `%s` from the repository root, or point %s at one", prefix, err, buildCommand, envVar)
	}
}

// Tool is the path of the command name, from PATH or else the first of
// fallbacks that exists, or fails the test (it never skips) saying how to
// install it (hint).
func Tool(t testing.TB, name, hint string, fallbacks ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, f := range fallbacks {
		if _, err := os.Stat(f); err == nil {
			return f
		}
	}
	t.Fatalf("%s is required for this test: %s (or run 'make deps')", name, hint)
	return ""
}

// FreePort picks a free loopback port. The servers run here cannot report
// a port they chose themselves, so one is picked and handed over; another
// process taking it in between is unlikely.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testproc: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Spec is one server to run.
type Spec struct {
	Prefix  string // log and error prefix, e.g. "testrekor"
	Name    string // the program, e.g. "rekor-server"
	Bin     string
	Args    []string
	Dir     string   // working directory; empty: the test's
	Env     []string // nil: the test's environment
	LogPath string   // the server's stdout and stderr
	// Ready reports nil once the server serves; Start polls it every Poll
	// until StartTimeout.
	Ready        func() error
	Poll         time.Duration // default 10 ms
	StartTimeout time.Duration // default 20 s
	StopTimeout  time.Duration // SIGTERM → SIGKILL; default 10 s
	TailLines    int           // lines of output shown on failure; default 80
}

// Start runs s, waits until it is ready and returns how long that took.
// t.Cleanup stops the process group: SIGTERM, then SIGKILL.
func Start(t testing.TB, s Spec) time.Duration {
	t.Helper()
	if s.Poll == 0 {
		s.Poll = 10 * time.Millisecond
	}
	if s.StartTimeout == 0 {
		s.StartTimeout = 20 * time.Second
	}
	if s.StopTimeout == 0 {
		s.StopTimeout = 10 * time.Second
	}
	if s.TailLines == 0 {
		s.TailLines = 80
	}
	logFile, err := os.Create(s.LogPath)
	if err != nil {
		t.Fatalf("%s: create log: %v", s.Prefix, err)
	}
	began := time.Now()
	cmd := exec.Command(s.Bin, s.Args...)
	cmd.Dir, cmd.Env = s.Dir, s.Env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, so stopping reaches the children it spawns
	// and a stuck child cannot keep the test's output open.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("%s: start %s: %v", s.Prefix, s.Name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		stop(cmd, exited, s.StopTimeout)
		logFile.Close()
		if t.Failed() {
			t.Logf("%s: output of %s:\n%s", s.Prefix, s.Name, Tail(s.LogPath, s.TailLines))
		}
	})

	deadline := began.Add(s.StartTimeout)
	for {
		select {
		case err := <-exited:
			exited <- err // Cleanup waits on it too
			t.Fatalf("%s: %s exited during startup: %v\n%s", s.Prefix, s.Name, err, Tail(s.LogPath, s.TailLines))
		default:
		}
		err := s.Ready()
		if err == nil {
			return time.Since(began)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s not ready after %s: %v\n%s", s.Prefix, s.Name, s.StartTimeout, err, Tail(s.LogPath, s.TailLines))
		}
		time.Sleep(s.Poll)
	}
}

func stop(cmd *exec.Cmd, exited chan error, timeout time.Duration) {
	pgid := -cmd.Process.Pid
	_ = syscall.Kill(pgid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(timeout):
		_ = syscall.Kill(pgid, syscall.SIGKILL)
		<-exited
	}
}

// HTTPOK is a Ready check: url answers 200.
func HTTPOK(url string) func() error {
	return func() error {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

// Tail returns the last n lines of a file, or why it could not.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no output: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Cosign is the path of cosign v3, the independent Sigstore verifier
// tests check bundles with; it fails the test when cosign is missing.
func Cosign(t testing.TB) string {
	t.Helper()
	return Tool(t, "cosign", "go install github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3", filepath.Join(build.Default.GOPATH, "bin", "cosign"))
}

// Crane is the path of crane, go-containerregistry's registry client
// (scripts/crane.sh builds it, or $PROVENIX_CRANE); it fails the test
// when crane is missing.
func Crane(t testing.TB) string {
	t.Helper()
	bin := Binary("PROVENIX_CRANE", "crane-0.21.7", "crane")
	Require(t, "crane", bin, "scripts/crane.sh build", "PROVENIX_CRANE")
	return bin
}
