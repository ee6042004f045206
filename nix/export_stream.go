package nix

import (
	"context"
	"errors"
	"io"
)

// ExportStream runs Export of paths into a pipe and calls consume with
// its reading end: the stream is never whole in memory. A failed export
// fails the pipe, so consume reads the export's error (a Stage then
// abandons its object instead of keeping a truncated one); consume
// returning ends the export. It returns consume's error.
func (n *Nix) ExportStream(ctx context.Context, consume func(io.Reader) error, paths ...string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends nix-store if consume stops reading
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(n.Export(ctx, pw, paths...))
	}()
	err := consume(pr)
	pr.CloseWithError(errors.New("nix: export stream consumer returned"))
	cancel()
	<-done
	return err
}
