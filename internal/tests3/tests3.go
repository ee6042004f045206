// Package tests3 runs a real S3 server, the Versity S3 Gateway (versitygw
// 1.8.0, POSIX backend), for integration tests of S3-backed stores.
//
// The package only executes a prebuilt binary; it never imports the server.
// Build it once with `scripts/versitygw.sh build` (scripts/install-deps.sh
// test does this). The binary is looked up in $PROVENIX_VERSITYGW, else in
// ${PROVENIX_TOOLS_DIR:-/var/cache/provenix-tools}/versitygw-1.8.0/versitygw.
// A missing binary fails the test with the command to run; it never skips.
//
// What the server looks like: plain HTTP on 127.0.0.1:<free port>, path-style
// buckets, root credentials AccessKey/SecretKey, region Region, objects as
// files under t.TempDir() (metadata in user xattrs, so the temp dir must be
// on a filesystem with them, as ext4, xfs and btrfs are), and one empty
// bucket created by Start.
package tests3

import (
	"fmt"
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

// Version is the versitygw release scripts/versitygw.sh builds.
const Version = "1.8.0"

// BuildCommand is what a developer runs, from the repository root, when the
// binary is missing.
const BuildCommand = "scripts/versitygw.sh build"

// Fixed root credentials and region of every server.
const (
	AccessKey = "provenix-test-access"
	SecretKey = "provenix-test-secret-key-0123456789"
	Region    = "us-east-1"
)

const (
	startTimeout = 20 * time.Second
	stopTimeout  = 10 * time.Second
	healthPath   = "/provenix-health"
)

// Server is one running versitygw. Its fields are read-only.
type Server struct {
	Endpoint    string // 127.0.0.1:<port>, no scheme (minio-go style)
	URL         string // http://127.0.0.1:<port>
	Bucket      string // created empty by Start
	Dir         string // the POSIX backend's root: Dir/<bucket>/<key>
	StartupTime time.Duration

	logPath string
}

// BinaryPath is where Start looks for the server binary.
func BinaryPath() string {
	if p := os.Getenv("PROVENIX_VERSITYGW"); p != "" {
		return p
	}
	dir := os.Getenv("PROVENIX_TOOLS_DIR")
	if dir == "" {
		dir = "/var/cache/provenix-tools"
	}
	return filepath.Join(dir, "versitygw-"+Version, "versitygw")
}

// Start runs a fresh server with one empty bucket for the test and stops it
// in t.Cleanup, dumping its output when the test failed.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := BinaryPath()
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("tests3: versitygw binary missing (%v); build it with `%s` from the repository root, or point PROVENIX_VERSITYGW at one", err, BuildCommand)
	}
	work := t.TempDir()
	s := &Server{
		Bucket:  "cache",
		Dir:     filepath.Join(work, "data"),
		logPath: filepath.Join(work, "versitygw.log"),
	}
	// The POSIX backend serves each top-level directory as a bucket, so
	// creating the directory creates the bucket without a signed request.
	if err := os.MkdirAll(filepath.Join(s.Dir, s.Bucket), 0o755); err != nil {
		t.Fatalf("tests3: %v", err)
	}
	port := freePort(t)
	s.Endpoint = fmt.Sprintf("127.0.0.1:%d", port)
	s.URL = "http://" + s.Endpoint

	logFile, err := os.Create(s.logPath)
	if err != nil {
		t.Fatalf("tests3: create log: %v", err)
	}
	began := time.Now()
	cmd := exec.Command(bin,
		"--access", AccessKey,
		"--secret", SecretKey,
		"--region", Region,
		"--port", s.Endpoint,
		"--health", healthPath,
		"--quiet",
		"posix", s.Dir)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("tests3: start versitygw: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		stop(cmd, exited)
		logFile.Close()
		if t.Failed() {
			t.Logf("tests3: output of versitygw:\n%s", readTail(s.logPath))
		}
	})

	deadline := began.Add(startTimeout)
	for {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("tests3: versitygw exited during startup: %v\n%s", err, readTail(s.logPath))
		default:
		}
		if ready(s.URL) {
			s.StartupTime = time.Since(began)
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("tests3: versitygw not ready at %s after %s\n%s", s.URL, startTimeout, readTail(s.logPath))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ready(base string) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(base + healthPath)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// stop asks the server to shut down gracefully, then kills its group.
func stop(cmd *exec.Cmd, exited chan error) {
	pgid := -cmd.Process.Pid
	_ = syscall.Kill(pgid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		_ = syscall.Kill(pgid, syscall.SIGKILL)
		<-exited
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("tests3: free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func readTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 80 {
		lines = lines[len(lines)-80:]
	}
	return strings.Join(lines, "\n")
}
