//go:build !linux

package isolate

import "context"

// Cgroups exist on Linux only.
type Cgroups struct{}

// Cgroup exists on Linux only.
type Cgroup struct{}

// OpenCgroups always fails here: kill by uid instead.
func OpenCgroups() (*Cgroups, error) { return nil, ErrNoCgroup }

func (c *Cgroups) New(string) (*Cgroup, error)      { return nil, ErrNoCgroup }
func (c *Cgroups) Close() error                     { return nil }
func (g *Cgroup) FD() int                           { return -1 }
func (g *Cgroup) Dir() string                       { return "" }
func (g *Cgroup) Contains(int) bool                 { return false }
func (g *Cgroup) Procs() ([]int, error)             { return nil, ErrNoCgroup }
func (g *Cgroup) Kill(context.Context) (int, error) { return 0, ErrNoCgroup }
func (g *Cgroup) Stats() (Stats, error)             { return Stats{}, ErrNoCgroup }
