#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <math.h>
#include <pthread.h>
#define N (16u<<20)
static size_t C; static float *x,*y; static int B;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void stats(const float*xr,float*m,float*r){ float s=0; for(size_t j=0;j<C;j++) s+=xr[j]; float mu=s/C; float q=0; for(size_t j=0;j<C;j++){float d=xr[j]-mu;q+=d*d;} *m=mu; *r=1.0f/sqrtf(q/C+1e-5f);}
static void apply(const float*xr,float*yr,float m,float r){ for(size_t j=0;j<C;j++) yr[j]=(xr[j]-m)*r; }
static void run(size_t lo,size_t hi){ float m[256],r[256];
  for(size_t i=lo;i<hi;i+=B){ size_t e=i+B<hi?i+B:hi; for(size_t k=i;k<e;k++) stats(x+k*C,&m[k-i],&r[k-i]); for(size_t k=i;k<e;k++) apply(x+k*C,y+k*C,m[k-i],r[k-i]); } }
typedef struct{size_t lo,hi;}R; static void*th(void*p){R*q=p;run(q->lo,q->hi);return 0;}
int cmp(const void*a,const void*b){double u=*(double*)a,v=*(double*)b;return u<v?-1:u>v;}
int main(int c,char**v){ int T=atoi(v[1]); C=atoi(v[2]); size_t rows=N/C; int Bs[]={1,2,4,8,16,32}; int nb=6;
  x=aligned_alloc(64,N*4); y=aligned_alloc(64,N*4); for(size_t i=0;i<N;i++){x[i]=i%977;y[i]=0;}
  double t[6][15];
  for(int rr=0;rr<15;rr++) for(int b=0;b<nb;b++){ B=Bs[b]; if((size_t)B*C*4>512*1024){t[b][rr]=1e9;continue;} double t0=now();
    if(T==1) run(0,rows); else { pthread_t p[2]; R q[2]={{0,rows/2},{rows/2,rows}}; for(int k=0;k<2;k++) pthread_create(&p[k],0,th,&q[k]); for(int k=0;k<2;k++) pthread_join(p[k],0);} t[b][rr]=now()-t0; }
  for(int b=0;b<nb;b++){ qsort(t[b],15,sizeof(double),cmp); if(t[b][7]<1e8) printf("T=%d C=%zu block=%2d rows (%4zu KiB)  median %.3f ms  %.1f GB/s\n",T,C,Bs[b],Bs[b]*C*4/1024,t[b][7]*1e3,2.0*N*4/t[b][7]/1e9);} }
