package isolate

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"codeberg.org/provenix/provenix/internal/testfs"
)

// TestRestrictDir: the users RestrictDir names reach a file below the
// directory, another job user does not, even when the file and the
// directory beneath are open to everyone (a job opening its own
// directory to others).
func TestRestrictDir(t *testing.T) {
	in, out := poolUser(t, "provenix-job-3"), poolUser(t, "provenix-job-4")
	parent := filepath.Join(testfs.OpenDir(t), "tenant-a")
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := RestrictDir(parent, []uint32{in.UID}); err != nil {
		t.Fatal(err)
	}
	jobDir := filepath.Join(parent, "task-1")
	if err := os.Mkdir(jobDir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(jobDir, 0o777); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(jobDir, "secret")
	if err := os.WriteFile(secret, []byte("tenant a"), 0o644); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(parent)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || fi.Mode().Perm()&0o007 != 0 {
		t.Errorf("restricted directory: owner %d, mode %v; want root's, nothing for others", st.Uid, fi.Mode().Perm())
	}
	run := func(u *User, args ...string) error {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups}}
		return cmd.Run()
	}
	if err := run(in, "cat", secret); err != nil {
		t.Errorf("%s, named in the ACL, cannot read below the directory: %v", in.Name, err)
	}
	if err := run(in, "ls", parent); err == nil {
		t.Errorf("%s lists the restricted directory: the ACL should grant search only", in.Name)
	}
	if err := run(out, "cat", secret); err == nil {
		t.Errorf("%s, not in the ACL, read a file below the restricted directory", out.Name)
	}
	if err := run(out, "ls", jobDir); err == nil {
		t.Errorf("%s, not in the ACL, listed a directory below the restricted one", out.Name)
	}
}
