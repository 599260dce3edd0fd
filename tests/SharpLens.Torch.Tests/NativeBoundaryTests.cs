using SharpLens.Tensors.Native;

namespace SharpLens.Tensors.Tests;

/// <summary>The C ABI contract: statuses become typed exceptions with the native message; errors are per thread; threads are configured.</summary>
public unsafe class NativeBoundaryTests
{
    [Test]
    public void LibraryAbiMatchesTheManagedBinding()
    {
        _ = Torch.LiveTensors;  // forces initialisation, which checks the version
        Assert.That(NativeMethods.sl_abi_version(), Is.EqualTo(NativeLibraryLoader.ExpectedAbiVersion));
    }

    [Test]
    public void NullHandleIsAnArgumentErrorNotACrash()
    {
        var ex = Assert.Throws<ArgumentException>(() =>
            NativeStatus.Check(NativeMethods.sl_tensor_unary(UnaryOp.Exp, TensorHandle.Null, out _)));
        Assert.That(ex!.Message, Does.Contain("tensor handle is null"));
    }

    [Test]
    public void LibtorchErrorsBecomeTorchExceptionsWithTheMessage()
    {
        using var scope = Torch.NewScope();
        var ex = Assert.Throws<TorchException>(() => Torch.Ones(2, 3).Matmul(Torch.Ones(2, 3)));
        Assert.That(ex!.Message, Does.Contain("2x3").And.Contain("cannot be multiplied"));
        Assert.That(ex.NativeStatus, Is.EqualTo((int)Status.Torch));
    }

    [Test]
    public void UnknownOpCodeIsRejected()
    {
        using var scope = Torch.NewScope();
        var t = Torch.Ones(1);
        var ex = Assert.Throws<ArgumentException>(() => NativeStatus.Check(NativeMethods.sl_tensor_unary((UnaryOp)999, t.Handle, out _)));
        Assert.That(ex!.Message, Does.Contain("unknown unary op 999"));
    }

    [Test]
    public void ErrorTextIsPerThread()
    {
        var barrier = new Barrier(2);
        string? first = null, second = null;
        var t1 = new Thread(() =>
        {
            using var scope = Torch.NewScope();
            var a = Torch.Ones(2, 3);
            var rc = NativeMethods.sl_tensor_view(a.Handle, null, -1, out _);
            barrier.SignalAndWait();
            barrier.SignalAndWait();
            first = rc != 0 ? System.Runtime.InteropServices.Marshal.PtrToStringUTF8((nint)NativeMethodsErrors.Last()) : null;
        });
        var t2 = new Thread(() =>
        {
            barrier.SignalAndWait();
            using var scope = Torch.NewScope();
            var rc = NativeMethods.sl_tensor_unary((UnaryOp)12345, TensorHandle.Null, out _);
            second = rc != 0 ? System.Runtime.InteropServices.Marshal.PtrToStringUTF8((nint)NativeMethodsErrors.Last()) : null;
            barrier.SignalAndWait();
        });
        t1.Start(); t2.Start(); t1.Join(); t2.Join();
        Assert.That(first, Does.Contain("negative length"));
        Assert.That(second, Does.Contain("tensor handle is null"));
    }

    [Test]
    public void ThreadCountIsConfigurable()
    {
        var original = Torch.NumThreads;
        try
        {
            var expected = int.TryParse(Environment.GetEnvironmentVariable("SHARPLENS_NUM_THREADS"), out var n) ? n : Environment.ProcessorCount;
            Assert.That(original, Is.EqualTo(expected), "defaults to SHARPLENS_NUM_THREADS or the core count");
            Torch.NumThreads = 1;
            Assert.That(Torch.NumThreads, Is.EqualTo(1));
            Assert.Throws<ArgumentException>(() => Torch.NumThreads = 0);
        }
        finally
        {
            Torch.NumThreads = original;
        }
    }
}

internal static unsafe class NativeMethodsErrors
{
    public static byte* Last() => NativeMethods.sl_last_error();
}
