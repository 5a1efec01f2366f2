// Round 16 (docs/perf/cpu.md): the BatchNorm-training pattern past the cache (16 MiB
// channels: a sum pass, then the apply) with ordinary vs non-temporal (_mm512_stream_ps)
// stores, against the scale stream both ways. gcc -O3 -march=native -ffast-math nontemporal-train.c
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <immintrin.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(){
  size_t total=(size_t)1<<28; float*x=aligned_alloc(64,total*4); float*y=aligned_alloc(64,total*4);
  for(size_t i=0;i<total;i++){x[i]=i%7;} memset(y,0,total*4);
  size_t n=(size_t)1<<22; // 16 MiB channel
  for(int nt=0;nt<2;nt++){
    double best=1e9; float acc=0;
    for(int r=0;r<3;r++){ double t0=now();
      for(size_t off=0;off<total;off+=n){ float s=0; for(size_t i=0;i<n;i++) s+=x[off+i]; float m=s/n;
        if(nt){ __m512 mm=_mm512_set1_ps(m), h=_mm512_set1_ps(0.5f);
          for(size_t i=0;i<n;i+=16) _mm512_stream_ps(y+off+i,_mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(x+off+i),mm),h)); }
        else for(size_t i=0;i<n;i++) y[off+i]=(x[off+i]-m)*0.5f; acc+=m;}
      _mm_sfence(); double t=now()-t0; if(t<best)best=t;}
    printf("train-like nt=%d: %.1f ms  %.1f GB/s  %g\n", nt, best*1e3, 2.0*total*4/best/1e9, acc);
  }
  for(int nt=0;nt<2;nt++){
  double best=1e9; for(int r=0;r<3;r++){double t0=now();
    if(nt){ __m512 h=_mm512_set1_ps(0.5f),o=_mm512_set1_ps(1); for(size_t i=0;i<total;i+=16) _mm512_stream_ps(y+i,_mm512_fmadd_ps(_mm512_load_ps(x+i),h,o)); _mm_sfence();}
    else for(size_t i=0;i<total;i++) y[i]=x[i]*0.5f+1; double t=now()-t0; if(t<best)best=t;}
  printf("scale pass nt=%d: %.1f ms %.1f GB/s\n",nt,best*1e3,2.0*total*4/best/1e9);}
  double best=1e9; float s=0; for(int r=0;r<3;r++){double t0=now(); for(size_t i=0;i<total;i++) s+=x[i]; double t=now()-t0; if(t<best)best=t;}
  printf("read: %.1f ms %.1f GB/s %g\n",best*1e3,1.0*total*4/best/1e9,s);
}
