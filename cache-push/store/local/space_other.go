//go:build !unix

package local

func freeSpace(string) string { return "free space unknown" }
