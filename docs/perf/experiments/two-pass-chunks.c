// Round 16 (docs/perf/cpu.md): one thread, 1 GiB of f32, per chunk of n elements a sum pass
// then y = (x - mean)/2; does a chunk stay in cache between the passes? (gcc -O3 -march=native
// -ffast-math two-pass-chunks.c)
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  size_t total=(size_t)1<<28; float*x=malloc(total*4); float*y=malloc(total*4);
  for(size_t i=0;i<total;i++){x[i]=i%7;} memset(y,0,total*4);
  size_t sizes[]={(size_t)1<<17,(size_t)1<<19,(size_t)1<<20,(size_t)1<<22,(size_t)1<<24,(size_t)1<<26,total};
  for(int k=0;k<7;k++){ size_t n=sizes[k];
    // pass structure: for each chunk of n floats: read (sum), then read again + write y
    double best=1e9; float acc=0;
    for(int r=0;r<3;r++){ double t0=now();
      for(size_t off=0;off<total;off+=n){ float s=0; for(size_t i=0;i<n;i++) s+=x[off+i]; float m=s/n;
        for(size_t i=0;i<n;i++) y[off+i]=(x[off+i]-m)*0.5f; acc+=m;}
      double t=now()-t0; if(t<best)best=t;}
    printf("chunk %8zu KiB: %.1f ms  %.1f GB/s (2-transfer model)  %g\n", n*4/1024, best*1e3, 2.0*total*4/best/1e9, acc);
  }
  // pure copy-like
  double best=1e9; for(int r=0;r<3;r++){double t0=now(); for(size_t i=0;i<total;i++) y[i]=x[i]*0.5f+1; double t=now()-t0; if(t<best)best=t;}
  printf("scale pass: %.1f ms %.1f GB/s\n",best*1e3,2.0*total*4/best/1e9);
}
